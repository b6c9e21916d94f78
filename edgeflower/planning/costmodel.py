"""Cost model: one training iteration's time for any split point on any node.

An iteration (one mini-batch) at split point ``k`` costs

* device compute: the profile's forward + backward time of blocks ``[:k]`` on this machine, scaled to the batch
  size and multiplied by the node's measured slow-down;
* uplink: the activations crossing ``k`` plus the int64 labels, over the node's uplink bandwidth;
* server compute: forward + backward time of blocks ``[k:]``, times the edge server's measured speed factor;
* downlink: the activation gradient (nothing when ``k = 0``), over the node's downlink bandwidth;
* a per-batch overhead measured on split rounds (serialisation, RPC round trip).

``k = num_blocks`` is classic FL: only device compute.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

from edgeflower.models.profiler import ModelProfile, profile_model
from edgeflower.models.splittable import SplittableModel

__all__ = ["LABEL_BYTES", "CostModel", "IterationCost", "NodeState", "median_profile"]

LABEL_BYTES = 8
"""Bytes per label sent up with the activations (int64)."""


@dataclass(frozen=True)
class NodeState:
    """What the cost model needs to know about a node.

    Attributes
    ----------
    slowdown : float
        Device compute time relative to the profile (this machine); 1.0 = as fast as this machine.
    uplink_mbps, downlink_mbps : float
        Link bandwidth in Mbit/s (``math.inf`` = no transfer delay).
    latency_s : float
        One-way latency per transfer in seconds.
    server_scale : float
        Edge-server compute time relative to the profile.
    overhead_s : float
        Fixed per-batch overhead of a split iteration (RPC, serialisation).
    """

    slowdown: float = 1.0
    uplink_mbps: float = math.inf
    downlink_mbps: float = math.inf
    latency_s: float = 0.0
    server_scale: float = 1.0
    overhead_s: float = 0.0

    def with_bandwidth(self, uplink_mbps: float, downlink_mbps: float | None = None) -> NodeState:
        """A copy with other bandwidths (downlink defaults to the uplink value)."""
        down = uplink_mbps if downlink_mbps is None else downlink_mbps
        return replace(self, uplink_mbps=uplink_mbps, downlink_mbps=down)


@dataclass(frozen=True)
class IterationCost:
    """Predicted seconds of one iteration, by phase."""

    device_s: float
    uplink_s: float
    server_s: float
    downlink_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        """Sum of all phases (sequential split training has no overlap)."""
        return self.device_s + self.uplink_s + self.server_s + self.downlink_s + self.overhead_s


def _transfer_s(nbytes: float, mbps: float, latency_s: float) -> float:
    if nbytes <= 0:
        return 0.0
    serial = 0.0 if mbps <= 0 or math.isinf(mbps) else nbytes * 8 / (mbps * 1e6)
    return serial + latency_s


class CostModel:
    """Predict iteration and round times from a :class:`ModelProfile`.

    Parameters
    ----------
    profile : ModelProfile
        Per-block FLOPs, activation bytes and measured forward/backward times (``measure=True``).
    batch_size : int, optional
        Training batch size (default: the profile's); compute times scale linearly from the profile's batch.
    """

    def __init__(self, profile: ModelProfile, batch_size: int | None = None) -> None:
        if not profile.blocks:
            raise ValueError("the profile has no blocks")
        if all(b.fwd_s == 0 and b.bwd_s == 0 for b in profile.blocks):
            raise ValueError("the profile has no measured times: build it with profile_model(..., measure=True)")
        self.profile = profile
        self.batch_size = int(batch_size or profile.batch_size)
        scale = self.batch_size / profile.batch_size
        self._block_s = [(b.fwd_s + b.bwd_s) * scale for b in profile.blocks]

    @property
    def num_blocks(self) -> int:
        """Number of blocks (= the no-offloading split point)."""
        return len(self.profile.blocks)

    @property
    def split_points(self) -> list[int]:
        """All split points ``0..num_blocks``."""
        return list(range(self.num_blocks + 1))

    def head_compute_s(self, k: int, batch_size: int | None = None) -> float:
        """Profile compute seconds of blocks ``[:k]`` for one batch on this machine."""
        return sum(self._block_s[:k]) * self._batch_scale(batch_size)

    def tail_compute_s(self, k: int, batch_size: int | None = None) -> float:
        """Profile compute seconds of blocks ``[k:]`` for one batch on this machine."""
        return sum(self._block_s[k:]) * self._batch_scale(batch_size)

    def uplink_bytes(self, k: int, batch_size: int | None = None) -> int:
        """Bytes sent up per batch at split ``k`` (0 for no offloading)."""
        if k >= self.num_blocks:
            return 0
        return (self.profile.boundary_bytes(k) + LABEL_BYTES) * (batch_size or self.batch_size)

    def downlink_bytes(self, k: int, batch_size: int | None = None) -> int:
        """Bytes of the activation gradient sent down per batch (0 for ``k = 0`` and no offloading)."""
        if k == 0 or k >= self.num_blocks:
            return 0
        return self.profile.boundary_bytes(k) * (batch_size or self.batch_size)

    def predict(self, k: int, node: NodeState) -> IterationCost:
        """Predicted seconds of one iteration at split ``k`` on ``node``."""
        if not 0 <= k <= self.num_blocks:
            raise ValueError(f"split point {k} out of range 0..{self.num_blocks}")
        device = self.head_compute_s(k) * node.slowdown
        if k == self.num_blocks:
            return IterationCost(device, 0.0, 0.0, 0.0, 0.0)
        return IterationCost(
            device_s=device,
            uplink_s=_transfer_s(self.uplink_bytes(k), node.uplink_mbps, node.latency_s),
            server_s=self.tail_compute_s(k) * node.server_scale,
            downlink_s=_transfer_s(self.downlink_bytes(k), node.downlink_mbps, node.latency_s),
            overhead_s=node.overhead_s,
        )

    def iteration_s(self, k: int, node: NodeState) -> float:
        """Predicted seconds of one iteration (all phases)."""
        return self.predict(k, node).total_s

    def round_s(self, k: int, node: NodeState, batches: int) -> float:
        """Predicted seconds of a round of ``batches`` iterations."""
        return self.iteration_s(k, node) * batches

    def _batch_scale(self, batch_size: int | None) -> float:
        return 1.0 if batch_size is None else batch_size / self.batch_size


def median_profile(model: SplittableModel, batch_size: int, repeats: int = 5, trials: int = 3) -> ModelProfile:
    """A profile robust to a shared machine: ``trials`` runs of ``profile_model``, per-block median times.

    ``profile_model`` keeps the fastest of ``repeats`` timings per block, but a burst of load from another process
    during one block's timings still skews the distribution across blocks (which the per-node speed factors
    cannot absorb). The median over independent trials removes such one-off skews.

    Parameters
    ----------
    model : SplittableModel
        The model to profile (left unchanged).
    batch_size : int
        Batch size of the timings.
    repeats : int
        Timing repetitions per block and trial (``profile_model``'s ``repeats``).
    trials : int
        Independent profiles to take the median over.
    """
    if trials < 1:
        raise ValueError("trials must be >= 1")
    runs = [profile_model(model, batch_size=batch_size, repeats=repeats) for _ in range(trials)]
    blocks = tuple(
        replace(
            block,
            fwd_s=statistics.median(r.blocks[i].fwd_s for r in runs),
            bwd_s=statistics.median(r.blocks[i].bwd_s for r in runs),
        )
        for i, block in enumerate(runs[0].blocks)
    )
    return replace(runs[0], blocks=blocks)
