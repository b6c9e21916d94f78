"""Per-node observations: what each node measured in a round, and what the server infers from it.

A node's reply metrics (``train-time-s``, ``device-s``, ``uplink-s``, ``server-s``, ``downlink-s``,
``num-examples``, ``split-point`` and, when present, ``batches``, ``uplink-bytes``, ``downlink-bytes``,
``uplink-mbps``, ``downlink-mbps``) become an :class:`Observation`. :class:`ObservationHistory` keeps every
node's observations and turns the latest ones into a :class:`~edgeflower.planning.costmodel.NodeState`:

* speed: measured device seconds per batch / the profile's head compute time at the split used;
* bandwidth: bytes * 8 / transfer seconds of the latest split round, or the link bandwidth the node reported
  (``uplink-mbps``/``downlink-mbps``, which also works in classic-FL rounds), else a prior;
* edge-server speed and per-batch overhead from the latest split round.

Measurements on a shared machine are noisy (one contended round can double a node's device time), so the compute
quantities (slow-down, edge-server speed, overhead) are the **median of the node's last** ``window`` **estimates**;
bandwidth is not smoothed, so a drop is seen in the very next plan. A node that has never offloaded has no
server-side measurement of its own: it gets the **fleet's** median edge-server speed and overhead (all devices
share the edge server class), instead of the prior ``server_scale = 1`` that trusts the profile.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace

from edgeflower.planning.costmodel import CostModel, NodeState

__all__ = ["NodeEstimate", "Observation", "ObservationHistory"]


@dataclass(frozen=True)
class Observation:
    """One node's measurements of one round.

    Attributes
    ----------
    server_round, node_id, split_point, batches : int
        Where and what was measured.
    train_s, device_s, uplink_s, server_s, downlink_s : float
        Measured seconds of the whole round and of each phase.
    uplink_bytes, downlink_bytes : float
        Bytes moved each way (estimated from the profile when the node did not report them).
    uplink_mbps, downlink_mbps : float
        Link bandwidth the node reported (``nan`` when it reported none).
    """

    server_round: int
    node_id: int
    split_point: int
    batches: int
    train_s: float
    device_s: float
    uplink_s: float
    server_s: float
    downlink_s: float
    uplink_bytes: float
    downlink_bytes: float
    uplink_mbps: float = math.nan
    downlink_mbps: float = math.nan

    @property
    def iteration_s(self) -> float:
        """Measured seconds per batch."""
        return self.train_s / max(self.batches, 1)

    @classmethod
    def from_metrics(
        cls, server_round: int, node_id: int, metrics: Mapping[str, float], cost: CostModel
    ) -> Observation:
        """Parse a node's reply metrics (see the module docstring for the keys)."""
        try:
            train_s = float(metrics["train-time-s"])
            k = int(metrics.get("split-point", cost.num_blocks))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"node {node_id} round {server_round}: metrics lack train-time-s: {exc}") from exc
        if not 0 <= k <= cost.num_blocks:
            raise ValueError(f"node {node_id} round {server_round}: split-point {k} out of range")
        examples = float(metrics.get("num-examples", 0))
        batches = int(metrics.get("batches", 0)) or max(1, math.ceil(examples / cost.batch_size))
        per_batch = examples / batches if examples else cost.batch_size
        up_b = float(metrics.get("uplink-bytes", cost.uplink_bytes(k, round(per_batch)) * batches))
        down_b = float(metrics.get("downlink-bytes", cost.downlink_bytes(k, round(per_batch)) * batches))
        return cls(
            server_round=server_round,
            node_id=node_id,
            split_point=k,
            batches=batches,
            train_s=train_s,
            device_s=float(metrics.get("device-s", train_s if k == cost.num_blocks else 0.0)),
            uplink_s=float(metrics.get("uplink-s", 0.0)),
            server_s=float(metrics.get("server-s", 0.0)),
            downlink_s=float(metrics.get("downlink-s", 0.0)),
            uplink_bytes=up_b,
            downlink_bytes=down_b,
            uplink_mbps=float(metrics.get("uplink-mbps", math.nan)),
            downlink_mbps=float(metrics.get("downlink-mbps", math.nan)),
        )


@dataclass(frozen=True)
class NodeEstimate:
    """A node's inferred state plus the round it was last updated in."""

    state: NodeState
    server_round: int
    measured_bandwidth: bool
    measured_server: bool = False


def _mbps(nbytes: float, seconds: float) -> float:
    if nbytes <= 0:
        return math.nan
    return math.inf if seconds <= 1e-9 else nbytes * 8 / seconds / 1e6


class ObservationHistory:
    """Every node's observations, oldest first, and the node states inferred from them.

    Parameters
    ----------
    cost : CostModel
        The cost model whose profile normalises the measured compute times.
    default_mbps : float
        Prior bandwidth of a node that has not measured or reported one yet.
    window : int
        Compute estimates are the median of the node's last ``window`` ones (1 = latest only).
    """

    def __init__(self, cost: CostModel, default_mbps: float = 50.0, window: int = 3) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.cost = cost
        self.default_mbps = float(default_mbps)
        self.window = int(window)
        self.observations: dict[int, list[Observation]] = {}
        self._states: dict[int, NodeEstimate] = {}
        self._raw: dict[int, dict[str, list[float]]] = {}

    def __contains__(self, node_id: int) -> bool:
        return node_id in self._states

    @property
    def nodes(self) -> list[int]:
        """Nodes with at least one observation."""
        return sorted(self._states)

    def add(self, server_round: int, node_id: int, metrics: Mapping[str, float]) -> Observation:
        """Record one reply and update the node's estimate."""
        obs = Observation.from_metrics(server_round, node_id, metrics, self.cost)
        self.observations.setdefault(node_id, []).append(obs)
        est = self._update(self._states.get(node_id), obs)
        raw = self._raw.setdefault(node_id, {"slowdown": [], "server_scale": [], "overhead_s": []})
        k = obs.split_point
        if self.cost.head_compute_s(k) > 0 and obs.device_s > 0:
            raw["slowdown"].append(est.state.slowdown)
        if k < self.cost.num_blocks:
            if self.cost.tail_compute_s(k) > 0 and obs.server_s > 0:
                raw["server_scale"].append(est.state.server_scale)
            raw["overhead_s"].append(est.state.overhead_s)
        smoothed = {
            key: statistics.median(values[-self.window :]) for key, values in raw.items() if values and self.window > 1
        }
        self._states[node_id] = replace(est, state=replace(est.state, **smoothed))
        return obs

    def server_estimate(self) -> tuple[float, float] | None:
        """Fleet median of the edge-server speed factor and per-batch overhead (``None`` before any split round)."""
        measured = [e.state for e in self._states.values() if e.measured_server]
        if not measured:
            return None
        return (
            statistics.median(s.server_scale for s in measured),
            statistics.median(s.overhead_s for s in measured),
        )

    def latest(self, node_id: int) -> Observation | None:
        """The node's latest observation."""
        obs = self.observations.get(node_id)
        return obs[-1] if obs else None

    def state(self, node_id: int) -> NodeState | None:
        """The node's inferred state (``None`` before its first observation)."""
        est = self._states.get(node_id)
        if est is None:
            return None
        if not est.measured_server:
            fleet = self.server_estimate()
            if fleet is not None:
                return replace(est.state, server_scale=fleet[0], overhead_s=fleet[1])
        return est.state

    def _update(self, prev: NodeEstimate | None, obs: Observation) -> NodeEstimate:
        cost = self.cost
        base = prev.state if prev is not None else NodeState(1.0, self.default_mbps, self.default_mbps)
        k, n = obs.split_point, obs.batches
        slowdown = base.slowdown
        head = cost.head_compute_s(k) * n
        if head > 0 and obs.device_s > 0:
            slowdown = max(obs.device_s / head, 1e-3)
        up, down, server_scale, overhead = base.uplink_mbps, base.downlink_mbps, base.server_scale, base.overhead_s
        measured = prev.measured_bandwidth if prev is not None else False
        measured_server = prev.measured_server if prev is not None else False
        if k < cost.num_blocks:
            measured_server = True
            m_up = _mbps(obs.uplink_bytes, obs.uplink_s)
            m_down = _mbps(obs.downlink_bytes, obs.downlink_s)
            if not math.isnan(m_up):
                up, measured = m_up, True
                down = m_down if not math.isnan(m_down) else up
            tail = cost.tail_compute_s(k) * n
            if tail > 0 and obs.server_s > 0:
                server_scale = obs.server_s / tail
            busy = obs.device_s + obs.uplink_s + obs.server_s + obs.downlink_s
            overhead = max(0.0, obs.train_s - busy) / n
        if not math.isnan(obs.uplink_mbps):  # what the node reported wins: it is current even in FL rounds
            up = obs.uplink_mbps if obs.uplink_mbps > 0 else math.inf
            down = up
            if not math.isnan(obs.downlink_mbps):
                down = obs.downlink_mbps if obs.downlink_mbps > 0 else math.inf
            measured = True
        state = NodeState(slowdown, up, down, 0.0, server_scale, overhead)
        return NodeEstimate(state, obs.server_round, measured, measured_server)
