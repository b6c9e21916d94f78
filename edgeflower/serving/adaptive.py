"""Adaptive partitioning between a device and an edge node (Neurosurgeon-style cut, re-planned at run time).

The latency of cut ``k`` (the device runs blocks ``[:k]``, the edge node ``[k:]``) under :class:`Conditions` is

    device_factor * sum(block_s[:k]) + up(bytes crossing k) + edge_factor * sum(block_s[k:]) + down(logits)

with ``device_factor = device_slowdown / (1 - device_load)`` (likewise for the edge) and transfers over the link's
bandwidth plus its latency; ``k = num_blocks`` sends nothing. :class:`CutModel` evaluates it, :func:`plan_cut`
picks the best cut, :class:`AdaptivePartitioner` re-plans when the observed conditions move, and
:class:`AdaptiveSplitServing` serves requests through a real inference node, observing bandwidth (from the
uplink transfer time) and edge load (from the node's compute time) and redeploying the tail when the plan changes.
:func:`measure_cut` and :func:`sensitivity_study` measure real latency per cut under emulated bandwidth and CPU load
(the brute-force reference).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from logging import INFO

import torch
from flwr.common.logger import log
from tqdm import tqdm

from edgeflower.models.splittable import SplittableModel
from edgeflower.serving.estimators import block_times, out_shapes
from edgeflower.serving.nodeclient import NodeClient, tensor_bytes
from edgeflower.serving.plan import new_version
from edgeflower.serving.protocol import MAX_CONTROL_BYTES, MAX_PING_BYTES
from edgeflower.transport.emulation import DeviceProfile, EmulatedLink, LinkProfile

__all__ = [
    "AdaptivePartitioner",
    "AdaptiveSplitServing",
    "Conditions",
    "CutModel",
    "best_cuts",
    "brute_force_cut",
    "measure_cut",
    "plan_cut",
    "sensitivity_study",
]


@dataclass(frozen=True)
class Conditions:
    """Operating conditions of a device-edge pair.

    Attributes
    ----------
    bandwidth_mbps : float
        Link bandwidth in both directions (0 = unlimited).
    latency_ms : float
        One-way link latency.
    device_slowdown, edge_slowdown : float
        Intrinsic compute slow-down relative to this machine (>= 1).
    device_load, edge_load : float
        Fraction of the CPU taken by other work (0 <= load < 1): compute takes ``1 / (1 - load)`` as long.
    """

    bandwidth_mbps: float
    latency_ms: float = 0.0
    device_slowdown: float = 1.0
    edge_slowdown: float = 1.0
    device_load: float = 0.0
    edge_load: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.device_load < 1 and 0 <= self.edge_load < 1):
            raise ValueError("CPU load must be in [0, 1)")

    @property
    def device_factor(self) -> float:
        """Device compute stretch."""
        return self.device_slowdown / (1 - self.device_load)

    @property
    def edge_factor(self) -> float:
        """Edge compute stretch."""
        return self.edge_slowdown / (1 - self.edge_load)

    @property
    def link(self) -> LinkProfile:
        """The link as a :class:`LinkProfile`."""
        return LinkProfile(self.bandwidth_mbps, self.bandwidth_mbps, self.latency_ms)


@dataclass(frozen=True)
class CutModel:
    """Per-block times and activation sizes of a model at one batch size.

    Attributes
    ----------
    block_s : tuple of float
        Forward seconds of every block (one thread, eval mode) at ``batch_size``.
    in_bytes : int
        Bytes of one input sample.
    out_bytes : tuple of int
        Bytes of every block's output per sample.
    batch_size : int
        The batch.
    """

    block_s: tuple[float, ...]
    in_bytes: int
    out_bytes: tuple[int, ...]
    batch_size: int

    @classmethod
    def profile(cls, model: SplittableModel, batch_size: int, repeats: int = 7) -> CutModel:
        """Measure ``model``."""
        shapes = out_shapes(model)
        return cls(
            tuple(block_times(model, batch_size, repeats)),
            4 * math.prod(model.spec.in_shape),
            tuple(4 * math.prod(s) for s in shapes),
            batch_size,
        )

    @property
    def num_blocks(self) -> int:
        """Blocks."""
        return len(self.block_s)

    def crossing_bytes(self, k: int) -> int:
        """Bytes of a batch sent to the edge at cut ``k`` (0 when everything runs on the device)."""
        if k == self.num_blocks:
            return 0
        return (self.in_bytes if k == 0 else self.out_bytes[k - 1]) * self.batch_size

    def latency(self, k: int, cond: Conditions) -> float:
        """Estimated seconds of one batch at cut ``k`` under ``cond``."""
        device = sum(self.block_s[:k]) * cond.device_factor
        if k == self.num_blocks:
            return device
        link = cond.link
        up = link.transfer_s(self.crossing_bytes(k), up=True)
        down = link.transfer_s(self.out_bytes[-1] * self.batch_size, up=False)
        edge = sum(self.block_s[k:]) * cond.edge_factor
        return device + up + edge + down + 2 * cond.latency_ms / 1000


def plan_cut(model: CutModel, cond: Conditions) -> tuple[int, list[float]]:
    """The cut with the lowest estimated latency under ``cond`` and every cut's estimate."""
    est = [model.latency(k, cond) for k in range(model.num_blocks + 1)]
    return min(range(len(est)), key=est.__getitem__), est


class AdaptivePartitioner:
    """Keeps the best cut for the observed conditions.

    Parameters
    ----------
    model : CutModel
        The latency model.
    conditions : Conditions
        Initial conditions.
    alpha : float
        Weight of a new observation in the exponential moving averages (1 = trust the last one only); bandwidth
        is averaged in log space, so a 100x drop is believed as fast as a 100x rise.
    min_gain : float
        Re-plan only when the new cut's estimated latency is at least this fraction lower than the current cut's.
    """

    def __init__(self, model: CutModel, conditions: Conditions, alpha: float = 0.5, min_gain: float = 0.05) -> None:
        self.model, self.conditions, self.alpha, self.min_gain = model, conditions, alpha, min_gain
        self.cut, _ = plan_cut(model, conditions)
        self.replans = 0

    def _ewma(self, old: float, new: float) -> float:
        return (1 - self.alpha) * old + self.alpha * new

    def observe(
        self, bandwidth_mbps: float | None = None, device_load: float | None = None, edge_load: float | None = None
    ) -> int | None:
        """Fold in observations; return the new cut when re-planning moved it, else ``None``."""
        c = self.conditions
        if bandwidth_mbps is not None and bandwidth_mbps > 0:
            old = c.bandwidth_mbps
            bw = bandwidth_mbps if old <= 0 else math.exp(self._ewma(math.log(old), math.log(bandwidth_mbps)))
            c = replace(c, bandwidth_mbps=bw)
        if device_load is not None:
            c = replace(c, device_load=min(max(self._ewma(c.device_load, device_load), 0.0), 0.95))
        if edge_load is not None:
            c = replace(c, edge_load=min(max(self._ewma(c.edge_load, edge_load), 0.0), 0.95))
        self.conditions = c
        best, est = plan_cut(self.model, c)
        if best != self.cut and est[best] < est[self.cut] * (1 - self.min_gain):
            log(
                INFO,
                "adaptive: cut %d -> %d (%.1f Mbit/s, edge load %.2f)",
                self.cut,
                best,
                c.bandwidth_mbps,
                c.edge_load,
            )
            self.cut = best
            self.replans += 1
            return best
        return None


def _stretch(device: DeviceProfile, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    t0 = time.perf_counter()
    out = fn()
    device.stretch(time.perf_counter() - t0)
    return out


@torch.no_grad()
def measure_cut(model: SplittableModel, k: int, cond: Conditions, x: torch.Tensor, repeats: int = 3) -> float:
    """Measured seconds of one batch at cut ``k``: real compute stretched by the CPU load and slow-downs, real
    sleeps for the emulated transfers, one torch thread; the fastest of ``repeats`` after a warm-up (as
    :func:`~edgeflower.models.profiler.profile_model` does: interference from other processes only adds time)."""
    head, tail = model.split(k, share=True)
    device = DeviceProfile(max(cond.device_factor, 1.0))
    edge = DeviceProfile(max(cond.edge_factor, 1.0))
    link = EmulatedLink(cond.link)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    times = []
    try:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            h = _stretch(device, lambda: head(x))
            if k < model.num_blocks:
                link.transmit(tensor_bytes(h), up=True)
                h = _stretch(edge, lambda h=h: tail(h))
                link.transmit(tensor_bytes(h), up=False)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)
    return min(times[1:])


def brute_force_cut(
    model: SplittableModel, cond: Conditions, x: torch.Tensor, repeats: int = 3
) -> tuple[int, list[float | None]]:
    """The cut with the lowest *measured* latency under ``cond`` (the reference the planner is checked against).

    Every cut is measured, except one whose emulated transfer time alone (a hard lower bound of its latency: the
    transfer is a real sleep) already exceeds the best latency measured so far; its entry is ``None``.
    """
    out_bytes = [tensor_bytes(t) for t in _activations(model, x)]
    link = cond.link
    best, measured = -1, []
    for k in range(model.num_blocks + 1):
        bound = 0.0 if k == model.num_blocks else link.transfer_s(out_bytes[k], up=True)
        if best >= 0 and bound > measured[best]:
            measured.append(None)
            continue
        measured.append(measure_cut(model, k, cond, x, repeats))
        if best < 0 or measured[k] < measured[best]:  # type: ignore[operator]
            best = k
    return best, measured


@torch.no_grad()
def _activations(model: SplittableModel, x: torch.Tensor) -> list[torch.Tensor]:
    """The input and every block's output (eval mode)."""
    model.eval()
    acts = [x]
    for block in model.blocks:
        acts.append(block(acts[-1]))
    return acts


def sensitivity_study(
    model: SplittableModel,
    conditions: Iterable[Conditions],
    batch_size: int = 32,
    repeats: int = 3,
    cut_model: CutModel | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Measure (and estimate) the latency of every cut under every condition.

    Returns
    -------
    list of dict
        One row per (condition, cut): the condition's fields, ``cut``, ``measured_s``, ``estimated_s``.
    """
    cm = cut_model or CutModel.profile(model, batch_size)
    x = torch.randn(batch_size, *model.spec.in_shape)
    conds = list(conditions)
    rows = []
    for cond in tqdm(conds, desc="sensitivity", disable=not progress):
        for k in range(model.num_blocks + 1):
            rows.append(
                {
                    "bandwidth_mbps": cond.bandwidth_mbps,
                    "latency_ms": cond.latency_ms,
                    "device_load": cond.device_load,
                    "edge_load": cond.edge_load,
                    "device_slowdown": cond.device_slowdown,
                    "cut": k,
                    "measured_s": measure_cut(model, k, cond, x, repeats),
                    "estimated_s": cm.latency(k, cond),
                }
            )
    return rows


class AdaptiveSplitServing:
    """Serve batches split between this process (the device) and an inference node (the edge), re-planning the cut
    from observed bandwidth and edge load.

    Parameters
    ----------
    model : SplittableModel
        The model (the device keeps the whole model; the node receives the tail).
    node : NodeClient
        The edge node (its link emulation is the device-edge link).
    cut_model : CutModel
        Latency model at the serving batch size.
    conditions : Conditions
        Initial belief about the conditions.
    device : DeviceProfile, optional
        The device's compute slow-down.
    alpha : float
        Weight of a new observation in the planner's moving averages.
    observe : tuple of str
        What to observe: ``"bandwidth"`` (from the uplink transfer time) and/or ``"load"`` (from the node's
        compute time against the profile). The first forward after a (re)deployment is a warm-up and not observed.
    probe_every, probe_bytes : int
        While everything runs on the device nothing crosses the link, so every ``probe_every``-th request sends a
        ``probe_bytes`` probe to keep observing the bandwidth (0 disables probing; at most 192 KiB, what a node's
        ``Ping`` accepts beside its header).

    Raises
    ------
    ValueError
        For ``probe_bytes`` out of that range.
    """

    def __init__(
        self,
        model: SplittableModel,
        node: NodeClient,
        cut_model: CutModel,
        conditions: Conditions,
        device: DeviceProfile | None = None,
        alpha: float = 0.5,
        observe: tuple[str, ...] = ("bandwidth", "load"),
        probe_every: int = 4,
        probe_bytes: int = 16384,
    ) -> None:
        if not 0 <= probe_bytes <= MAX_PING_BYTES - MAX_CONTROL_BYTES:
            raise ValueError(f"probe_bytes must be in [0, {MAX_PING_BYTES - MAX_CONTROL_BYTES}], got {probe_bytes}")
        self.model, self.node, self.cut_model = model.eval(), node, cut_model
        self.observe = set(observe)
        self.probe_every, self.probe_bytes = probe_every, probe_bytes
        self._warm = False
        self._local = 0
        self.device = device or DeviceProfile()
        self.planner = AdaptivePartitioner(cut_model, conditions, alpha=alpha)
        self.version = ""
        self.cut = -1
        self.redeploys = 0
        self._deploy(self.planner.cut)

    def _deploy(self, k: int) -> None:
        self.cut = k
        if k < self.model.num_blocks:
            self.version = new_version()
            state = self.model.segment(k, self.model.num_blocks, share=True).state_dict()
            self.node.deploy(self.version, self.model.spec, k, self.model.num_blocks, state)
            self.redeploys += 1
            self._warm = False

    @torch.no_grad()
    def infer(self, x: torch.Tensor, request_id: str = "adaptive") -> torch.Tensor:
        """Classify ``x`` at the current cut; observe the link and the edge; re-plan (and redeploy) if needed."""
        k = self.cut
        head = self.model.segment(0, k, share=True)
        h = _stretch(self.device, lambda: head(x))
        if k == self.model.num_blocks:
            self._local += 1
            if "bandwidth" in self.observe and self.probe_every and self._local % self.probe_every == 0:
                hold = self.node.probe(self.probe_bytes) - self.node.link.profile.latency_ms / 1000
                if hold > 1e-4 and self.planner.observe(bandwidth_mbps=self.probe_bytes * 8 / hold / 1e6) is not None:
                    self._deploy(self.planner.cut)
            return h
        y = self.node.forward(self.version, request_id, h)
        if not self._warm:
            self._warm = True
            return y
        sent = tensor_bytes(h)
        hold = self.node.last_up_s - self.node.link.profile.latency_ms / 1000
        bandwidth = sent * 8 / hold / 1e6 if hold > 1e-4 else None
        expected = sum(self.cut_model.block_s[k:]) * len(x) / self.cut_model.batch_size
        load = 1 - expected / self.node.last_compute_s if self.node.last_compute_s > 0 else None
        new = self.planner.observe(
            bandwidth_mbps=bandwidth if "bandwidth" in self.observe else None,
            edge_load=max(load, 0.0) if load is not None and "load" in self.observe else None,
        )
        if new is not None:
            self._deploy(new)
        return y


def best_cuts(rows: Sequence[dict[str, float]], key: str) -> dict[tuple, int]:
    """Per condition (all fields but ``cut`` and the times), the cut minimising ``key``."""
    best: dict[tuple, tuple[float, int]] = {}
    for r in rows:
        cond = tuple((k, v) for k, v in r.items() if k not in ("cut", "measured_s", "estimated_s"))
        if cond not in best or r[key] < best[cond][0]:
            best[cond] = (r[key], int(r["cut"]))
    return {c: k for c, (_, k) in best.items()}
