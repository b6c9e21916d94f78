"""Offline training and evaluation of the FedAdapt agent in :class:`~edgeflower.planning.env.OffloadEnv`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeflower.planning.costmodel import NodeState
from edgeflower.planning.env import OffloadEnv
from edgeflower.planning.ppo import PPOAgent, PPOConfig
from edgeflower.planning.scenario import Testbed

__all__ = ["PolicyScore", "evaluate_policy", "node_states_of", "plot_rewards", "train_agent"]

Policy = Callable[[list[float]], Sequence[int]]


def train_agent(
    env: OffloadEnv,
    episodes: int,
    config: PPOConfig | None = None,
    seed: int = 0,
    on_episode: Callable[[int, float], None] | None = None,
    select_env: OffloadEnv | None = None,
    select_every: int = 20,
    select_episodes: int = 10,
) -> tuple[PPOAgent, list[float]]:
    """Train a PPO agent for ``episodes`` episodes of ``env``.

    Parameters
    ----------
    env : OffloadEnv
        The simulated testbed.
    episodes : int
        Episodes to train.
    config : PPOConfig, optional
        Hyper-parameters (FedAdapt's by default).
    seed : int
        Seed of the agent.
    on_episode : callable, optional
        Called with ``(episode, episode_reward)`` after each episode (e.g. to advance a progress bar).
    select_env : OffloadEnv, optional
        If given, the *deterministic* policy (each group's most likely cut, which is what is deployed) is evaluated
        on the same ``select_episodes`` episodes of this environment every ``select_every`` episodes and at the
        end, and the best weights are kept. PPO trains a stochastic policy; its most likely action can score
        differently from its samples, so checkpoint selection on the deployed behaviour matters.
    select_every, select_episodes : int
        How often and on how many episodes the deterministic policy is evaluated.

    Returns
    -------
    (PPOAgent, list of float)
        The agent (its network holds the selected weights; ``agent.selection`` records the evaluations) and each
        episode's summed reward.
    """
    agent = PPOAgent(env.state_dim, env.action_dim, env.num_choices, config, seed=seed)
    rewards: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    selection: list[tuple[int, float]] = []

    def checkpoint(ep: int) -> None:
        nonlocal best
        if select_env is None:
            return
        select_env.reseed(seed + 10_007)  # the same episodes every time: common random numbers
        score = evaluate_policy(select_env, agent.policy_fn(), select_episodes).reward
        selection.append((ep, score))
        if best is None or score > best[0]:
            best = (score, {k: v.detach().clone() for k, v in agent.net.state_dict().items()})

    try:
        for ep in range(episodes):
            state, done, total = env.reset(), False, 0.0
            while not done:
                action = agent.act(state)
                state, reward, done, info = env.step(action)
                agent.record(info.group_rewards, done)
                total += reward
            rewards.append(total)
            if on_episode is not None:
                on_episode(ep, total)
            if (ep + 1) % max(1, select_every) == 0 and ep + 1 < episodes:
                checkpoint(ep + 1)
        checkpoint(episodes)
        if best is not None:
            agent.net.load_state_dict(best[1])
    finally:
        torch.set_num_threads(threads)
    agent.selection = selection
    return agent, rewards


@dataclass(frozen=True)
class PolicyScore:
    """Mean per-episode reward and mean round time relative to classic FL of a policy."""

    reward: float
    round_ratio: float


def evaluate_policy(env: OffloadEnv, policy: Policy, episodes: int = 20) -> PolicyScore:
    """Run ``policy`` (state -> one split point per group) for ``episodes`` episodes; no learning."""
    rewards, ratios = [], []
    for _ in range(episodes):
        state, done, total = env.reset(), False, 0.0
        while not done:
            state, reward, done, info = env.step(list(policy(state)))
            total += reward
            ratios.append(info.round_ratio)
        rewards.append(total)
    return PolicyScore(float(np.mean(rewards)), float(np.mean(ratios)))


def plot_rewards(rewards: Sequence[float], path: str | Path, title: str = "FedAdapt agent training") -> Path:
    """Draw the episode rewards and their moving average to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.asarray(rewards, dtype=float)
    w = max(1, len(r) // 20)
    smooth = np.convolve(r, np.ones(w) / w, mode="valid") if len(r) >= w else r
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(r, color="#9bc", lw=0.8, label="episode reward")
    ax.plot(np.arange(w - 1, w - 1 + len(smooth)), smooth, color="#137", lw=2, label=f"moving mean ({w})")
    ax.axhline(0.0, color="#a33", ls="--", lw=1, label="no offloading")
    ax.set(title=title, xlabel="episode", ylabel="reward (sum over devices and steps)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def node_states_of(testbed: Testbed, server_round: int = 1, overhead_s: float = 0.0) -> list[NodeState]:
    """The testbed's devices as cost-model node states at ``server_round`` (0 Mbit/s = unlimited)."""
    out = []
    for node in testbed.nodes:
        link = node.link.at(server_round)
        out.append(
            NodeState(
                slowdown=node.device.slowdown,
                uplink_mbps=link.uplink_mbps or math.inf,
                downlink_mbps=link.downlink_mbps or math.inf,
                latency_s=link.latency_ms / 1000,
                overhead_s=overhead_s,
            )
        )
    return out
