"""The environment the FedAdapt agent trains in: a testbed simulated with the cost model.

Each episode is a short training run: the devices (slow-downs and bandwidths taken from a testbed, jittered per
episode) start with a classic-FL measurement round; every step the agent's action per group sets the split point
of every device in the group, the cost model (with multiplicative noise) gives each device's iteration time, the
reward is FedAdapt's (relative to each device's no-offloading time), and the devices are regrouped by k-means on
their speed and bandwidth for the next state. With probability ``drop_prob`` some devices' bandwidth drops to
``drop_mbps`` at a random step, so the agent also learns to pull work back when the network degrades.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgeflower.planning.actions import SplitMapper, offload_reward
from edgeflower.planning.costmodel import CostModel, NodeState
from edgeflower.planning.kmeans import group_nodes, node_features
from edgeflower.planning.state import agent_state

__all__ = ["EnvConfig", "OffloadEnv", "StepInfo"]


@dataclass(frozen=True)
class EnvConfig:
    """Episode settings of :class:`OffloadEnv`."""

    num_groups: int = 3
    episode_len: int = 10
    jitter: float = 0.25
    noise: float = 0.05
    drop_prob: float = 0.5
    drop_mbps: float = 5.0
    drop_fraction: float = 0.4


@dataclass(frozen=True)
class StepInfo:
    """What happened in one step (for logging and evaluation)."""

    splits: dict[int, int]
    times: dict[int, float]
    baselines: dict[int, float]
    groups: dict[int, int]

    @property
    def round_ratio(self) -> float:
        """Slowest device's time over the slowest no-offloading time (< 1: faster than classic FL)."""
        return max(self.times.values()) / max(self.baselines.values())


class OffloadEnv:
    """A gym-like environment (``reset`` / ``step``) over ``devices`` and a cost model.

    Parameters
    ----------
    cost : CostModel
        Built from the measured profile of the model.
    devices : sequence of NodeState
        The testbed's devices (any number).
    config : EnvConfig, optional
        Episode settings; ``config.num_groups`` fixes the state (``2 G``) and action (``G``) sizes.
    seed : int
        Seed of the per-episode randomisation.
    """

    def __init__(
        self, cost: CostModel, devices: Sequence[NodeState], config: EnvConfig | None = None, seed: int = 0
    ) -> None:
        if not devices:
            raise ValueError("the environment needs at least one device")
        self.cost = cost
        self.devices = list(devices)
        self.config = config or EnvConfig()
        if self.config.num_groups < 1:
            raise ValueError("num_groups must be >= 1")
        self.mapper = SplitMapper(cost.profile)
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self._episode: list[NodeState] = []
        self._drop_at, self._dropped = math.inf, set[int]()
        self._groups: dict[int, int] = {}

    @property
    def state_dim(self) -> int:
        """Length of a state vector."""
        return 2 * self.config.num_groups

    @property
    def action_dim(self) -> int:
        """Length of an action vector."""
        return self.config.num_groups

    def _now(self) -> dict[int, NodeState]:
        out = {}
        for i, dev in enumerate(self._episode):
            if i in self._dropped and self.t >= self._drop_at:
                dev = dev.with_bandwidth(self.config.drop_mbps)
            out[i] = dev
        return out

    def _baselines(self, states: dict[int, NodeState]) -> dict[int, float]:
        return {i: self.cost.iteration_s(self.cost.num_blocks, s) for i, s in states.items()}

    def _noisy(self, value: float) -> float:
        return value * math.exp(self.rng.normal(0.0, self.config.noise)) if self.config.noise > 0 else value

    def reset(self) -> list[float]:
        """Start an episode; the first state is the classic-FL measurement round."""
        cfg = self.config
        j = cfg.jitter
        self._episode = []
        for dev in self.devices:
            f_s, f_b = np.exp(self.rng.uniform(-j, j, size=2))
            self._episode.append(
                replace(
                    dev,
                    slowdown=max(1e-3, dev.slowdown * f_s),
                    uplink_mbps=dev.uplink_mbps * f_b,
                    downlink_mbps=dev.downlink_mbps * f_b,
                )
            )
        self._dropped = set()
        self._drop_at = math.inf
        if self.rng.random() < cfg.drop_prob:
            self._drop_at = int(self.rng.integers(1, max(2, cfg.episode_len)))
            self._dropped = {i for i in range(len(self.devices)) if self.rng.random() < cfg.drop_fraction} or {
                int(self.rng.integers(len(self.devices)))
            }
        self.t = 0
        states = self._now()
        base = self._baselines(states)
        times = {i: self._noisy(b) for i, b in base.items()}
        splits = dict.fromkeys(states, self.cost.num_blocks)
        self._groups = self._group(states)
        return agent_state(self._groups, times, splits, base, self.mapper, cfg.num_groups)

    def _group(self, states: dict[int, NodeState]) -> dict[int, int]:
        return group_nodes({i: node_features(s) for i, s in states.items()}, self.config.num_groups)

    def step(self, action: Sequence[float]) -> tuple[list[float], float, bool, StepInfo]:
        """Apply one action (one value per group); return ``(state, reward, done, info)``."""
        cfg = self.config
        if len(action) != cfg.num_groups:
            raise ValueError(f"expected {cfg.num_groups} action values, got {len(action)}")
        self.t += 1
        states = self._now()
        base = self._baselines(states)
        splits = {i: self.mapper.split(float(action[self._groups[i]])) for i in states}
        times = {i: self._noisy(self.cost.iteration_s(splits[i], s)) for i, s in states.items()}
        reward = offload_reward([times[i] for i in states], [base[i] for i in states])
        info = StepInfo(splits, times, base, dict(self._groups))
        self._groups = self._group(states)
        state = agent_state(self._groups, times, splits, base, self.mapper, cfg.num_groups)
        return state, reward, self.t >= cfg.episode_len, info
