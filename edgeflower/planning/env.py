"""The environment the FedAdapt agent trains in: a testbed simulated with the cost model.

Each episode is a short training run: the devices (slow-downs and bandwidths taken from a testbed, jittered per
episode) start with a classic-FL measurement round; every step the agent's action per group (a split point,
``0..num_blocks``) sets the split point of every device in the group, the cost model gives each device's iteration
time, the reward is FedAdapt's (relative to each device's no-offloading time), and the devices are regrouped by
k-means for the next state (:func:`~edgeflower.planning.state.agent_state`: per group measured time, current split,
uplink bandwidth and compute class).

What the deployed planner sees is reproduced, not idealised:

* **measurement noise and contention**: every measured time carries multiplicative log-normal noise and, with
  probability ``spike_prob``, a contention spike (a shared CPU); the state and the k-means features are built from
  these *measured* values (the slow-down is estimated from the measured device time, as
  :class:`~edgeflower.planning.observations.ObservationHistory` does), while the reward uses the true times;
* **profile mismatch**: the edge server's speed relative to the profile is drawn per episode (``server_range``),
  since a profile measured under load can be several times off; optionally (``compute_range``, off by default)
  a machine-wide factor on every device's compute (load from other jobs);
* **bandwidth drops**: with probability ``drop_prob`` some devices fall to ``drop_mbps`` (the testbed's 75 ->
  5 Mbit/s, jittered like the other bandwidths) at a random step; the reported bandwidth in the state follows;
* **per-class slow-downs**: with probability ``class_slow_prob`` every device of one speed class becomes
  ``class_slow_range`` times slower at a random step (e.g. thermal throttling, a background job).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgeflower.planning.actions import SplitMapper, offload_reward
from edgeflower.planning.costmodel import CostModel, NodeState
from edgeflower.planning.kmeans import group_nodes, node_features
from edgeflower.planning.state import STATE_FEATURES, agent_state

__all__ = ["EnvConfig", "OffloadEnv", "StepInfo"]


@dataclass(frozen=True)
class EnvConfig:
    """Episode settings of :class:`OffloadEnv`.

    Attributes
    ----------
    num_groups, episode_len : int
        Agent groups (state ``STATE_FEATURES * G``, action ``G`` split points) and steps per episode.
    jitter : float
        Per-episode log-uniform jitter of every device's slow-down and bandwidth (``exp(U(-j, j))``).
    noise : float
        Standard deviation of the log-normal noise on every measured time.
    spike_prob : float
        Probability that a device's measurement in a step is hit by contention ...
    spike_range : (float, float)
        ... which multiplies it by a factor drawn uniformly from this range.
    server_range : (float, float)
        Edge-server speed factor relative to the profile, drawn log-uniformly per episode.
    compute_range : (float, float)
        Factor on every device's compute time relative to the profile, drawn log-uniformly per episode.
    drop_prob, drop_mbps, drop_fraction : float
        Probability of a bandwidth drop in an episode, the bandwidth after it, and the share of devices hit.
    class_slow_prob : float
        Probability of a per-class slow-down in an episode ...
    class_slow_range : (float, float)
        ... by a factor drawn uniformly from this range.
    """

    num_groups: int = 3
    episode_len: int = 10
    jitter: float = 0.25
    noise: float = 0.1
    spike_prob: float = 0.1
    spike_range: tuple[float, float] = (1.3, 2.5)
    server_range: tuple[float, float] = (0.25, 1.5)
    compute_range: tuple[float, float] = (1.0, 1.0)
    drop_prob: float = 0.6
    drop_mbps: float = 5.0
    drop_fraction: float = 0.4
    class_slow_prob: float = 0.2
    class_slow_range: tuple[float, float] = (1.5, 3.0)


@dataclass(frozen=True)
class StepInfo:
    """What happened in one step (for logging, evaluation and per-group credit: ``group_rewards[g]`` is the reward
    of group ``g``'s devices, which only group ``g``'s action affected; they sum to the step's reward)."""

    splits: dict[int, int]
    times: dict[int, float]
    baselines: dict[int, float]
    groups: dict[int, int]
    group_rewards: tuple[float, ...] = ()

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
        Episode settings; ``config.num_groups`` fixes the state (``STATE_FEATURES * G``) and action (``G``) sizes.
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
        self._drop_jitter: dict[int, float] = {}
        self._slow_at, self._slowed, self._slow_factor = math.inf, set[int](), 1.0
        self._groups: dict[int, int] = {}
        self._est_slowdown: dict[int, float] = {}

    def reseed(self, seed: int) -> None:
        """Restart the random stream (e.g. to evaluate policies on the same episodes)."""
        self.rng = np.random.default_rng(seed)

    @property
    def state_dim(self) -> int:
        """Length of a state vector."""
        return STATE_FEATURES * self.config.num_groups

    @property
    def action_dim(self) -> int:
        """Length of an action vector (one split point per group)."""
        return self.config.num_groups

    @property
    def num_choices(self) -> int:
        """Split points a group's action can take (``0..num_blocks``)."""
        return self.cost.num_blocks + 1

    def true_states(self) -> dict[int, NodeState]:
        """Every device's true state at the current step (bandwidth drops and slow-downs applied)."""
        out = {}
        for i, dev in enumerate(self._episode):
            if i in self._dropped and self.t >= self._drop_at:
                dev = dev.with_bandwidth(self.config.drop_mbps * self._drop_jitter[i])
            if i in self._slowed and self.t >= self._slow_at:
                dev = replace(dev, slowdown=dev.slowdown * self._slow_factor)
            out[i] = dev
        return out

    def _baselines(self, states: dict[int, NodeState]) -> dict[int, float]:
        return {i: self.cost.iteration_s(self.cost.num_blocks, s) for i, s in states.items()}

    def _measure(self, value: float) -> float:
        """``value`` as a node would measure it: log-normal noise and, sometimes, a contention spike."""
        cfg = self.config
        if cfg.noise > 0:
            value *= math.exp(self.rng.normal(0.0, cfg.noise))
        if cfg.spike_prob > 0 and self.rng.random() < cfg.spike_prob:
            value *= float(self.rng.uniform(*cfg.spike_range))
        return value

    def _estimated(self, states: dict[int, NodeState]) -> dict[int, NodeState]:
        """What the server believes: measured slow-downs, reported bandwidths, no knowledge of the server speed."""
        return {i: replace(s, slowdown=self._est_slowdown[i]) for i, s in states.items()}

    def reset(self) -> list[float]:
        """Start an episode; the first state is the classic-FL measurement round."""
        cfg = self.config
        j = cfg.jitter
        lo, hi = (math.log(v) for v in cfg.server_range)
        server = math.exp(self.rng.uniform(lo, hi))
        lo, hi = (math.log(v) for v in cfg.compute_range)
        compute = math.exp(self.rng.uniform(lo, hi))
        self._episode = []
        for dev in self.devices:
            f_s, f_b = np.exp(self.rng.uniform(-j, j, size=2))
            self._episode.append(
                replace(
                    dev,
                    slowdown=max(1e-3, dev.slowdown * f_s * compute),
                    uplink_mbps=dev.uplink_mbps * f_b,
                    downlink_mbps=dev.downlink_mbps * f_b,
                    server_scale=dev.server_scale * server,
                )
            )
        n = len(self.devices)
        self._dropped, self._drop_at = set(), math.inf
        if self.rng.random() < cfg.drop_prob:
            self._drop_at = int(self.rng.integers(1, max(2, cfg.episode_len)))
            self._dropped = {i for i in range(n) if self.rng.random() < cfg.drop_fraction} or {
                int(self.rng.integers(n))
            }
        self._drop_jitter = {i: float(np.exp(self.rng.uniform(-j, j))) for i in range(n)}
        self._slowed, self._slow_at, self._slow_factor = set(), math.inf, 1.0
        if self.rng.random() < cfg.class_slow_prob:
            classes = sorted({d.slowdown for d in self.devices})
            pick = classes[int(self.rng.integers(len(classes)))]
            self._slowed = {i for i, d in enumerate(self.devices) if d.slowdown == pick}
            self._slow_at = int(self.rng.integers(1, max(2, cfg.episode_len)))
            self._slow_factor = float(self.rng.uniform(*cfg.class_slow_range))
        self.t = 0
        states = self.true_states()
        base = self._baselines(states)
        times = {i: self._measure(b) for i, b in base.items()}
        self._est_slowdown = {i: max(1e-3, times[i] / self.cost.head_compute_s(self.cost.num_blocks)) for i in states}
        splits = dict.fromkeys(states, self.cost.num_blocks)
        est = self._estimated(states)
        self._groups = self._group(est)
        return self._state(times, splits, est)

    def _state(self, times: dict[int, float], splits: dict[int, int], est: dict[int, NodeState]) -> list[float]:
        uplinks = {i: s.uplink_mbps for i, s in est.items()}
        return agent_state(
            self._groups, times, splits, self._baselines(est), uplinks, self.mapper, self.config.num_groups
        )

    def _group(self, states: dict[int, NodeState]) -> dict[int, int]:
        return group_nodes({i: node_features(s) for i, s in states.items()}, self.config.num_groups)

    def step(self, action: Sequence[int]) -> tuple[list[float], float, bool, StepInfo]:
        """Apply one action (one split point ``0..num_blocks`` per group); return ``(state, reward, done, info)``."""
        cfg = self.config
        if len(action) != cfg.num_groups:
            raise ValueError(f"expected {cfg.num_groups} action values, got {len(action)}")
        ks = [int(a) for a in action]
        if any(k != a or not 0 <= k <= self.cost.num_blocks for k, a in zip(ks, action, strict=True)):
            raise ValueError(f"actions must be split points 0..{self.cost.num_blocks}, got {list(action)}")
        self.t += 1
        states = self.true_states()
        base = self._baselines(states)
        splits = {i: ks[self._groups[i]] for i in states}
        true_times = {i: self.cost.iteration_s(splits[i], s) for i, s in states.items()}
        times = {}
        for i, s in states.items():
            pred = self.cost.predict(splits[i], s)
            factor = self._measure(1.0)
            times[i] = true_times[i] * factor
            head = self.cost.head_compute_s(splits[i])
            if head > 0:  # the server re-estimates the slow-down from the measured device time
                self._est_slowdown[i] = max(1e-3, pred.device_s * factor / head)
        reward = offload_reward([true_times[i] for i in states], [base[i] for i in states])
        per_group = tuple(
            offload_reward(
                [true_times[i] for i in states if self._groups[i] == g],
                [base[i] for i in states if self._groups[i] == g],
            )
            for g in range(cfg.num_groups)
        )
        info = StepInfo(splits, true_times, base, dict(self._groups), per_group)
        est = self._estimated(states)
        self._groups = self._group(est)
        return self._state(times, splits, est), reward, self.t >= cfg.episode_len, info
