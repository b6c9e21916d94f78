"""``edgeflower train-agent``: train the FedAdapt PPO agent offline and save its policy.

The environment is built from the model's measured profile (on this machine) and a named testbed scenario; the
agent trains for ``--episodes`` episodes with a progress bar, the policy is written without pickle
(:func:`~edgeflower.planning.policy.save_policy`) and the reward curve to a PNG next to it.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from edgeflower.models import build_model, profile_model
from edgeflower.models.profiler import ModelProfile
from edgeflower.planning.costmodel import CostModel, median_profile
from edgeflower.planning.env import EnvConfig, OffloadEnv
from edgeflower.planning.policy import PolicyHeader, save_policy
from edgeflower.planning.ppo import PPOConfig
from edgeflower.planning.scenario import fedadapt_testbed
from edgeflower.planning.training import evaluate_policy, node_states_of, train_agent

__all__ = ["TrainedAgent", "agent_figure", "plot_agent", "register", "replot_agent", "train_policy"]

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
    restarts: int = 1,
    ppo: PPOConfig | None = None,
    profile: ModelProfile | None = None,
    profile_trials: int = 1,
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
    restarts : int
        Independent trainings (seeds ``seed, seed + 1, ...``); the one whose deterministic policy scores best on
        a held-out set of episodes is kept (each training also keeps its best checkpoint, see
        :func:`~edgeflower.planning.training.train_agent`).
    ppo : PPOConfig, optional
        Hyper-parameters (FedAdapt's by default).
    profile : ModelProfile, optional
        The model's measured profile (default: measured here, see ``profile_trials``).
    profile_trials : int
        Profiles to take the per-block median of (:func:`~edgeflower.planning.costmodel.median_profile`).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}")
    if episodes < 1 or num_groups < 1 or restarts < 1:
        raise ValueError("episodes, groups and restarts must be >= 1")
    ppo = ppo or PPOConfig()
    model = build_model(model_name, in_shape=in_shape)
    if profile is None:
        profile = median_profile(model, batch_size, trials=profile_trials) if profile_trials > 1 else None
        profile = profile or profile_model(model, batch_size=batch_size)
    cost = CostModel(profile, batch_size)
    devices = node_states_of(SCENARIOS[scenario](), overhead_s=overhead_s)
    config = EnvConfig(num_groups=num_groups, episode_len=episode_len)
    bar = tqdm(total=episodes * restarts, desc="train-agent", unit="ep", disable=not progress)

    def tick(ep: int, reward: float) -> None:
        bar.update(1)
        bar.set_postfix(reward=f"{reward:.2f}")

    candidates = []
    try:
        for r in range(restarts):
            env = OffloadEnv(cost, devices, config, seed=seed + r)
            select = OffloadEnv(cost, devices, config, seed=seed + 1000)
            agent, rewards = train_agent(env, episodes, ppo, seed=seed + r, on_episode=tick, select_env=select)
            select.reseed(seed + 2000)  # held-out episodes for choosing among the restarts
            candidates.append((evaluate_policy(select, agent.policy_fn(), 20).reward, r, agent, rewards))
    finally:
        bar.close()
    _, best_restart, agent, rewards = max(candidates, key=lambda c: (c[0], -c[1]))
    score = evaluate_policy(OffloadEnv(cost, devices, config, seed=seed + 1), agent.policy_fn(), episodes=20)
    no_offload = [model.num_blocks] * num_groups
    fl = evaluate_policy(OffloadEnv(cost, devices, config, seed=seed + 1), lambda s: no_offload, episodes=20)
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
        "ppo": ppo.to_dict(),
        "restarts": restarts,
        "chosen_restart": best_restart,
        "restart_scores": [c[0] for c in candidates],
        "training_rewards": [[round(float(x), 4) for x in c[3]] for c in sorted(candidates, key=lambda c: c[1])],
        "env": {k: v for k, v in asdict(config).items() if k not in ("num_groups", "episode_len")},
    }
    header = save_policy(path, agent.net, model_name, model.num_blocks, info)
    png = plot_agent(
        [c[3] for c in sorted(candidates, key=lambda c: c[1])],
        best_restart,
        score.reward,
        fl.reward,
        path.with_suffix(".png"),
        title=f"FedAdapt agent on {scenario} ({model_name})",
    )
    return TrainedAgent(header, rewards, path, png, score.reward, fl.reward, score.round_ratio)


def plot_agent(
    runs: list[list[float]],
    chosen: int,
    final_reward: float,
    no_offload_reward: float,
    path: str | Path,
    title: str = "FedAdapt agent training",
) -> Path:
    """Write :func:`agent_figure` to the PNG ``path``."""
    import matplotlib.pyplot as plt

    fig = agent_figure(runs, chosen, final_reward, no_offload_reward, title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def agent_figure(
    runs: list[list[float]],
    chosen: int,
    final_reward: float,
    no_offload_reward: float,
    title: str = "FedAdapt agent training",
) -> Any:
    """Every training episode of every restart, the chosen restart in bold, and the final figures marked.

    Training episodes explore (sampled actions), so their rewards sit below the chosen policy's deterministic
    evaluation (``final_reward``, on held-out episodes), which is what the command prints; it is drawn as a star
    after the last episode, annotated ``final: X.XX``. ``no_offload_reward`` is always-classic-FL evaluated on the
    same episodes. Episode ticks are integers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 4.6))
    start = 0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rewards in enumerate(runs):
        r = np.asarray(rewards, dtype=float)
        xs = np.arange(start + 1, start + len(r) + 1)
        color = colors[i % len(colors)]
        ax.plot(xs, r, color=color, lw=0.6, alpha=0.35)
        w = max(1, len(r) // 15)
        if len(r) >= w:
            smooth = np.convolve(r, np.ones(w) / w, mode="valid")
            label = (
                f"restart {i + 1}" + (" (chosen)" if i == chosen else "") + (f", moving mean of {w}" if w > 1 else "")
            )
            ax.plot(xs[w - 1 :], smooth, color=color, lw=2.4 if i == chosen else 1.2, label=label)
        if i and len(runs) > 1:
            ax.axvline(start + 0.5, color="#888", lw=0.6)  # where the next restart begins
        start += len(r)
    ax.axhline(
        no_offload_reward, color="#a33", ls="--", lw=1.2, label=f"no offloading, evaluated: {no_offload_reward:.2f}"
    )
    ax.axhline(final_reward, color="k", ls=":", lw=1.2, label=f"chosen policy, evaluated: {final_reward:.2f}")
    values = [final_reward, no_offload_reward] + [v for r in runs for v in r]
    top, lowest = max(values), min(values)
    ax.plot([start], [final_reward], marker="*", ms=15, color="k", zorder=5, label="_final")
    ax.annotate(
        f"final: {final_reward:.2f}",
        (start, final_reward),
        textcoords="offset points",
        xytext=(-10, -18 if final_reward >= lowest + 0.3 * (top - lowest) else 12),
        ha="right",
        fontsize=10,
        fontweight="bold",
        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "k", "lw": 0.6},
    )
    fig.suptitle(title)
    ax.set_title(
        "curves: training episodes, exploring (sampled actions); final: the chosen policy evaluated without "
        "exploration on held-out episodes",
        fontsize=8,
        color="#555",
    )
    ax.set(
        xlabel=f"training episode (all {start}, restarts one after another)",
        ylabel="reward (sum over devices and steps)",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, start * 1.03 + 1)
    ax.set_ylim(lowest - 0.08 * (top - lowest + 1), top + 0.15 * (top - lowest + 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def replot_agent(policy_path: str | Path, png_path: str | Path | None = None) -> Path:
    """Redraw the reward curve of a policy file from the training history in its header (no training).

    Raises
    ------
    PolicyError
        The file is not a valid policy, or was written before the header kept the history (``training_rewards``).
    """
    from edgeflower.planning.policy import PolicyError, load_policy

    _, header = load_policy(policy_path)
    info = header.info
    runs = info.get("training_rewards")
    if not isinstance(runs, list) or not runs:
        raise PolicyError(f"policy file {policy_path} keeps no training history (written by an older edgeflower)")
    title = f"FedAdapt agent on {info.get('scenario', '?')} ({header.model})"
    out = Path(png_path) if png_path is not None else Path(policy_path).with_suffix(".png")
    return plot_agent(
        runs,
        int(info.get("chosen_restart", 0)),
        float(info["eval_reward"]),
        float(info["no_offload_reward"]),
        out,
        title=title,
    )


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
        restarts=args.restarts,
        profile_trials=args.profile_trials,
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
    p = subparsers.add_parser(
        "train-agent",
        help="train the FedAdapt PPO agent offline and save its policy",
        description="Train the FedAdapt PPO agent against the emulated testbed (profiled on this machine), keep the "
        "best of --restarts trainings, and write the policy file and its reward curve (PNG next to it).",
    )
    p.add_argument("--out", default="fedadapt-policy.pt", help="policy file (reward PNG next to it)")
    p.add_argument("--model", default="vgg5", help="zoo model")
    p.add_argument("--in-shape", default="1x28x28", help="input shape CxHxW (1x28x28: Fashion-MNIST)")
    p.add_argument("--scenario", default="fedadapt", choices=sorted(SCENARIOS), help="testbed scenario")
    p.add_argument("--episodes", type=int, default=300, help="training episodes per restart")
    p.add_argument("--episode-len", type=int, default=10, help="rounds per episode")
    p.add_argument("--groups", type=int, default=3, help="device groups (k-means k)")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the environment and the agent")
    p.add_argument("--restarts", type=int, default=3, help="independent trainings, best kept")
    p.add_argument("--profile-trials", type=int, default=1, help="profiles to take the per-block median of")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
