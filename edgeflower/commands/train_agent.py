"""``edgeflower train-agent``: train the FedAdapt PPO agent offline and save its policy.

The environment is built from the model's measured profile (on this machine) and a named testbed scenario; the
agent trains for ``--episodes`` episodes with a progress bar, the policy is written without pickle
(:func:`~edgeflower.planning.policy.save_policy`) and the reward curve to a PNG next to it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from edgeflower.models import build_model, profile_model
from edgeflower.planning.costmodel import CostModel
from edgeflower.planning.env import EnvConfig, OffloadEnv
from edgeflower.planning.policy import PolicyHeader, save_policy
from edgeflower.planning.ppo import PPOConfig
from edgeflower.planning.scenario import fedadapt_testbed
from edgeflower.planning.training import evaluate_policy, node_states_of, plot_rewards, train_agent

__all__ = ["TrainedAgent", "register", "train_policy"]

SCENARIOS = {"fedadapt": fedadapt_testbed}


@dataclass(frozen=True)
class TrainedAgent:
    """What :func:`train_policy` produced."""

    header: PolicyHeader
    rewards: list[float]
    policy_path: Path
    png_path: Path
    agent_reward: float
    no_offload_reward: float
    agent_round_ratio: float


def train_policy(
    out: str | Path,
    model_name: str = "vgg5",
    in_shape: tuple[int, int, int] = (1, 28, 28),
    scenario: str = "fedadapt",
    episodes: int = 300,
    num_groups: int = 3,
    batch_size: int = 100,
    episode_len: int = 10,
    overhead_s: float = 0.005,
    seed: int = 0,
    progress: bool = True,
) -> TrainedAgent:
    """Profile ``model_name``, train the agent in the scenario's environment, save policy and reward PNG.

    Parameters
    ----------
    out : str or Path
        Policy file to write; the reward curve goes to the same path with suffix ``.png``.
    model_name, in_shape : str, tuple
        Zoo model and input shape (Fashion-MNIST's by default).
    scenario : str
        Named testbed (``fedadapt``).
    episodes, num_groups, batch_size, episode_len : int
        Training length, agent groups, training batch size and steps (rounds) per episode.
    overhead_s : float
        Per-batch overhead of split iterations assumed by the environment (RPC, serialisation).
    seed : int
        Seed of the environment and the agent.
    progress : bool
        Show a tqdm progress bar.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}")
    if episodes < 1 or num_groups < 1:
        raise ValueError("episodes and groups must be >= 1")
    model = build_model(model_name, in_shape=in_shape)
    cost = CostModel(profile_model(model, batch_size=batch_size), batch_size)
    devices = node_states_of(SCENARIOS[scenario](), overhead_s=overhead_s)
    config = EnvConfig(num_groups=num_groups, episode_len=episode_len)
    env = OffloadEnv(cost, devices, config, seed=seed)
    bar = tqdm(total=episodes, desc="train-agent", unit="ep", disable=not progress)

    def tick(ep: int, reward: float) -> None:
        bar.update(1)
        bar.set_postfix(reward=f"{reward:.2f}")

    try:
        agent, rewards = train_agent(env, episodes, PPOConfig(), seed=seed, on_episode=tick)
    finally:
        bar.close()
    test_env = OffloadEnv(cost, devices, config, seed=seed + 1)
    score = evaluate_policy(test_env, lambda s: agent.act(s, explore=False).tolist(), episodes=20)
    fl = evaluate_policy(OffloadEnv(cost, devices, config, seed=seed + 1), lambda s: [1.0] * num_groups, episodes=20)
    path = Path(out)
    info = {
        "scenario": scenario,
        "episodes": episodes,
        "episode_len": episode_len,
        "batch_size": batch_size,
        "in_shape": list(in_shape),
        "seed": seed,
        "eval_reward": score.reward,
        "eval_round_ratio_vs_fl": score.round_ratio,
        "no_offload_reward": fl.reward,
        "ppo": PPOConfig().to_dict(),
    }
    header = save_policy(path, agent.net, model_name, model.num_blocks, info)
    png = plot_rewards(rewards, path.with_suffix(".png"), title=f"FedAdapt agent on {scenario} ({model_name})")
    return TrainedAgent(header, rewards, path, png, score.reward, fl.reward, score.round_ratio)


def _run(args: argparse.Namespace) -> int:
    shape = tuple(int(v) for v in args.in_shape.split("x"))
    if len(shape) != 3:
        raise ValueError(f"--in-shape must be CxHxW, got {args.in_shape!r}")
    result = train_policy(
        args.out,
        args.model,
        shape,  # type: ignore[arg-type]
        args.scenario,
        args.episodes,
        args.groups,
        args.batch_size,
        args.episode_len,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"policy: {result.policy_path} (sha256 {result.header.sha256[:12]}...)")
    print(f"reward curve: {result.png_path}")
    print(
        f"evaluation: agent reward {result.agent_reward:.2f} vs no offloading {result.no_offload_reward:.2f}; "
        f"round time {result.agent_round_ratio:.2f}x classic FL"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``train-agent``."""
    p = subparsers.add_parser("train-agent", help="train the FedAdapt PPO agent offline and save its policy")
    p.add_argument("--out", default="fedadapt-policy.pt", help="policy file (reward PNG next to it)")
    p.add_argument("--model", default="vgg5", help="zoo model (default vgg5)")
    p.add_argument("--in-shape", default="1x28x28", help="input shape CxHxW (default 1x28x28, Fashion-MNIST)")
    p.add_argument("--scenario", default="fedadapt", choices=sorted(SCENARIOS), help="testbed scenario")
    p.add_argument("--episodes", type=int, default=300, help="training episodes (default 300)")
    p.add_argument("--episode-len", type=int, default=10, help="rounds per episode (default 10)")
    p.add_argument("--groups", type=int, default=3, help="device groups (k-means k, default 3)")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
