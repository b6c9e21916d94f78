"""PiPar's automatic selection of the split point ``k`` and the micro-batch count ``m``.

From a per-block profile (measured forward/backward seconds on the edge server's machine, activation bytes), a
node's device slow-down and its link, :func:`predict_iteration` gives one batch's time for a plan ``(k, m)`` as the
critical path through the pipeline's stages: per micro-batch a device forward ``F``, an upload ``U``, server work
``S``, a download ``D`` and a device backward ``B``, with the device, each link direction and the server each
doing one thing at a time, the device running all forwards before the first backward, and a link transfer
arriving ``latency`` after it leaves. :func:`select_plan` returns the plan with the shortest predicted time over
every split point (including ``k = num_blocks``, no offloading) and every micro-batch count that divides the batch.

:class:`PiParPlanner` is a :class:`~edgeflower.planning.base.Planner` like the FedAdapt planners: it keeps per-node
estimates of the device slow-down and the bandwidth from what nodes report after each round (in the same
:class:`~edgeflower.planning.observations.ObservationHistory`), and re-selects each node's plan every round (so a
bandwidth drop moves the plan).

Sizes are counted right: activation bytes are ``numel * 4`` for float32 (PiPar's reference code counted bits as
bytes) and labels travel as int64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeflower.models.profiler import ModelProfile
from edgeflower.planning.base import SplitPlan
from edgeflower.planning.costmodel import CostModel, NodeState
from edgeflower.planning.planners import ObservingPlanner
from edgeflower.transport.emulation import LinkProfile

__all__ = ["PiParPlanner", "predict_iteration", "select_plan", "stage_times"]

LABEL_BYTES = 8
MESSAGE_OVERHEAD_S = 0.004
"""Fixed cost of one step message on the offload channel (framing, gRPC, scheduling), measured on loopback."""
DEFAULT_MBPS = 100.0
"""Bandwidth a node is assumed to have before it reports one."""
CHANNEL_BYTES_PER_S = 500e6
"""Codec and gRPC copy throughput of the offload channel on loopback (benchmark ``split``: ``channel_mb_s``)."""


@dataclass(frozen=True)
class Stages:
    """Per-micro-batch stage durations (seconds) of one plan; ``*_ser`` exclude the link latency."""

    fwd: float
    up_ser: float
    server: float
    down_ser: float
    bwd: float
    latency: float
    m: int
    offload: bool
    grads_back: bool


def stage_times(
    profile: ModelProfile,
    k: int,
    m: int,
    batch_size: int,
    slowdown: float,
    link: LinkProfile,
    message_overhead_s: float = MESSAGE_OVERHEAD_S,
    channel_bytes_per_s: float = CHANNEL_BYTES_PER_S,
) -> Stages:
    """Stage durations of plan ``(k, m)`` for micro-batches of ``batch_size / m`` samples.

    Block times of the profile (measured at ``profile.batch_size`` and at 2 samples) are a fixed per-call part
    plus a part linear in the micro-batch size; device times are multiplied by ``slowdown``. The server stage
    also pays the channel's fixed cost per message and its copy cost per byte: with the per-call compute overhead,
    that is what makes very many tiny micro-batches lose.
    """
    n = len(profile.blocks)
    if not 0 <= k <= n:
        raise ValueError(f"split point {k} out of range 0..{n}")
    if m < 1 or m > batch_size:
        raise ValueError(f"micro-batch count {m} out of range 1..{batch_size}")
    samples = batch_size / m
    pb = profile.batch_size
    fwd = slowdown * sum(b.fwd_at(samples, pb) for b in profile.blocks[:k])
    bwd = slowdown * sum(b.bwd_at(samples, pb) for b in profile.blocks[:k])
    if k == n:
        return Stages(fwd, 0.0, 0.0, 0.0, bwd, 0.0, m, offload=False, grads_back=False)
    up_bytes = profile.boundary_bytes(k) * samples + LABEL_BYTES * samples
    down_bytes = profile.boundary_bytes(k) * samples if k > 0 else 0.0
    server = sum(b.fwd_at(samples, pb) + b.bwd_at(samples, pb) for b in profile.blocks[k:])
    server += message_overhead_s + (up_bytes + down_bytes) / channel_bytes_per_s
    return Stages(
        fwd,
        link.transfer_s(int(up_bytes), True),
        server,
        link.transfer_s(int(down_bytes), False),
        bwd,
        link.latency_ms / 1000,
        m,
        offload=True,
        grads_back=k > 0,
    )


def critical_path(st: Stages) -> float:
    """Makespan of one batch through the stage graph (see the module docstring)."""
    if not st.offload:
        return st.m * (st.fwd + st.bwd)
    f_end = [0.0] * st.m
    up_free = down_free = s_end = b_end = 0.0
    arrivals = [0.0] * st.m
    t = 0.0
    for j in range(st.m):
        t += st.fwd
        f_end[j] = t
    for j in range(st.m):
        up_start = max(f_end[j], up_free)
        up_free = up_start + st.up_ser
        s_end = max(up_free + st.latency, s_end) + st.server
        if st.grads_back:
            down_start = max(s_end, down_free)
            down_free = down_start + st.down_ser
            arrivals[j] = down_free + st.latency
    if not st.grads_back:
        return s_end
    b_end = f_end[-1]
    for j in range(st.m):
        b_end = max(arrivals[j], b_end) + st.bwd
    return b_end


def predict_iteration(
    profile: ModelProfile,
    k: int,
    m: int,
    batch_size: int,
    slowdown: float = 1.0,
    link: LinkProfile | None = None,
    message_overhead_s: float = MESSAGE_OVERHEAD_S,
) -> float:
    """Predicted seconds of one batch with plan ``(k, m)``."""
    st = stage_times(profile, k, m, batch_size, slowdown, link or LinkProfile(), message_overhead_s)
    return critical_path(st)


def divisors(n: int, cap: int | None = None) -> list[int]:
    """Divisors of ``n`` up to ``cap``."""
    return [d for d in range(1, (cap or n) + 1) if n % d == 0]


def select_plan(
    profile: ModelProfile,
    batch_size: int,
    slowdown: float = 1.0,
    link: LinkProfile | None = None,
    split_points: list[int] | None = None,
    micro_batches: list[int] | None = None,
    message_overhead_s: float = MESSAGE_OVERHEAD_S,
    max_micro_batches: int = 32,
) -> SplitPlan:
    """The plan with the shortest predicted batch time (``predicted_s``: that time).

    Parameters
    ----------
    profile : ModelProfile
        Per-block profile measured on the edge server's machine.
    batch_size : int
        Samples per batch.
    slowdown : float
        The device's compute slow-down relative to the profile's machine.
    link : LinkProfile, optional
        The node's link (unlimited when omitted).
    split_points, micro_batches : list of int, optional
        Restrict the candidates (a fixed ``split-point`` or ``microbatches`` in run config); default all split
        points ``0..num_blocks`` and every divisor of ``batch_size`` up to ``max_micro_batches``.
    message_overhead_s : float
        Fixed server-side cost per message (decode/encode), from observations.
    max_micro_batches : int
        Largest micro-batch count considered.
    """
    ks = split_points if split_points is not None else list(range(len(profile.blocks) + 1))
    ms = micro_batches if micro_batches is not None else divisors(batch_size, min(batch_size, max_micro_batches))
    best: SplitPlan | None = None
    best_s = float("inf")
    for k in ks:
        for m in ms if k < len(profile.blocks) else [1]:
            t = predict_iteration(profile, k, m, batch_size, slowdown, link, message_overhead_s)
            if best is None or t < best_s - 1e-12:
                best, best_s = SplitPlan(k, m, t), t
    if best is None:
        raise ValueError("no candidate plans")
    return best


class PiParPlanner(ObservingPlanner):
    """Per-node automatic (k, m) selection that follows what nodes report.

    Parameters
    ----------
    profile : ModelProfile
        Per-block profile measured on the edge server's machine (with ``fwd_s``/``bwd_s``).
    batch_size : int
        Samples per batch.
    split_point : int
        A fixed split point, or ``-1`` to select it.
    micro_batches : int
        A fixed micro-batch count, or ``0`` to select it.
    """

    def __init__(self, profile: ModelProfile, batch_size: int, split_point: int = -1, micro_batches: int = 0) -> None:
        super().__init__(CostModel(profile, batch_size), DEFAULT_MBPS, window=1)
        self.profile = profile
        self.batch_size = batch_size
        self.fixed_k = split_point
        self.fixed_m = micro_batches

    def estimate(self, node: int) -> NodeState:
        """What the planner believes about ``node`` (the prior before its first reply)."""
        return self.history.state(node) or NodeState(1.0, DEFAULT_MBPS, DEFAULT_MBPS)

    def best_plan(self, node: int) -> SplitPlan:
        """The plan with the shortest predicted batch time for what the planner believes about ``node``."""
        est = self.estimate(node)
        return select_plan(
            self.profile,
            self.batch_size,
            est.slowdown,
            LinkProfile(est.uplink_mbps, est.downlink_mbps, est.latency_s * 1e3),
            split_points=[self.fixed_k] if self.fixed_k >= 0 else None,
            micro_batches=[self.fixed_m] if self.fixed_m > 0 else None,
        )

    def plan(self, server_round: int, node_ids: Sequence[int]) -> dict[int, SplitPlan]:
        """Each node's :meth:`best_plan` for ``server_round``."""
        return self._remember(server_round, {n: self.best_plan(n) for n in node_ids})
