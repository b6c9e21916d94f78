"""Estimators of each failover option: accuracy (validation profiling), latency (block profile + link model) and
downtime (bytes to deploy and the calibrated load rate).

* **Accuracy** of ``(technique, failed node)`` is measured once, offline, on validation data with the same blocks
  and exit heads the nodes will run (:func:`accuracy_table`).
* **Latency** of a route is ``sum over stages of (hop + speed * compute + transfer in + transfer out + 2 * link
  latency)``: compute from per-block forward times measured at the serving batch size in eval mode with one thread
  (:func:`block_times`), transfers from activation bytes and the stage's :class:`LinkProfile`; ``speed`` (the
  node's compute time over the profile's) and ``hop`` (RPC, codec, queueing) are learnt per node and per batch
  size (powers of two) from the requests the controller relays, continuously, and a route is estimated at the batch
  size its clients send (:class:`LatencyModel`).
* **Downtime** of a route switch is ``switch_s`` when nothing is deployed (early exit, skip) and, for a
  repartition, ``sum over nodes of (fixed_s + bytes * per_byte_s + link transfer)`` with ``fixed_s`` and
  ``per_byte_s`` fitted on the initial deployment (:class:`DowntimeModel`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from edgeflower.data.datasets import ImageData
from edgeflower.models.splittable import SplittableModel
from edgeflower.serving.exits import ExitHead
from edgeflower.serving.plan import Route, Stage, skippable
from edgeflower.transport.emulation import LinkProfile

__all__ = ["DowntimeModel", "LatencyModel", "accuracy_table", "block_times", "out_shapes"]


@torch.no_grad()
def out_shapes(model: SplittableModel) -> list[tuple[int, ...]]:
    """Per-sample output shape of every block."""
    was = model.training
    model.eval()
    x = torch.zeros(1, *model.spec.in_shape)
    shapes = []
    for block in model.blocks:
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    model.train(was)
    return shapes


@torch.no_grad()
def block_times(model: SplittableModel, batch_size: int, repeats: int = 7, threads: int = 1) -> list[float]:
    """Median eval-mode forward seconds of every block on a batch of ``batch_size`` with ``threads`` threads."""
    was, saved = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch_size, *model.spec.in_shape)
        out = []
        for block in model.blocks:
            block(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = block(x)
                times.append(time.perf_counter() - t0)
            out.append(statistics.median(times))
            x = y
    finally:
        torch.set_num_threads(saved)
        model.train(was)
    return out


@torch.no_grad()
def accuracy_table(
    model: SplittableModel,
    exits: Mapping[int, ExitHead],
    cuts: Sequence[int],
    data: ImageData,
    batch_size: int = 500,
) -> dict[str, float]:
    """Accuracy of every option for every failed node on ``data``.

    Returns
    -------
    dict
        ``"full"`` and ``"<technique>:<node>"`` -> accuracy; options that do not exist (no exit head before the
        first node, a node whose blocks change the shape) are absent.
    """
    was = model.training
    model.eval()
    shapes = out_shapes(model)
    n = len(cuts) - 1
    correct: dict[str, int] = {}

    def hit(key: str, logits: torch.Tensor, y: torch.Tensor) -> None:
        correct[key] = correct.get(key, 0) + int((logits.argmax(1) == y).sum())

    for i in range(0, len(data), batch_size):
        x, y = data.x[i : i + batch_size], data.y[i : i + batch_size]
        acts = [x]
        for block in model.blocks:
            acts.append(block(acts[-1]))
        hit("full", acts[-1], y)
        for node in range(n):
            start, stop = cuts[node], cuts[node + 1]
            hit(f"repartition:{node}", acts[-1], y)
            if node > 0 and start in exits:
                hit(f"early_exit:{node}", exits[start](acts[start]), y)
            if skippable(shapes, model.spec.in_shape, start, stop):
                h = acts[start]
                for block in list(model.blocks)[stop:]:
                    h = block(h)
                hit(f"skip:{node}", h, y)
    model.train(was)
    return {k: v / max(len(data), 1) for k, v in correct.items()}


@dataclass
class LatencyModel:
    """Latency of a route for one batch, calibrated continuously on the requests the controller relays.

    A stage's estimate is ``hop + speed * compute + wire``: ``compute`` from the offline block profile, ``wire``
    from the node's link, and per node two factors learnt from its recent forwards (:meth:`observe`): ``speed``,
    the node's reported compute time over the profile's prediction (a slower or busier node than the profiling
    machine), and ``hop``, the rest of the stage's wall time (RPC, codec, queueing). Each is the trimmed mean of the
    last ``window`` observations (the lowest and highest ``trim`` share dropped), so an outburst of contention does
    not pass for the node's usual speed, while the means of the stages still add up to the route's (stage times
    under load are skewed: a sum of per-stage medians falls short of a route's typical latency). A node
    never observed uses ``speed = 1`` and :attr:`hop_s` (the heartbeat round trip).

    Compute and overhead do not scale linearly with the batch (a batch of 4 costs far more than an eighth of a
    batch of 32), so both are learnt per batch-size class (the nearest power of two) and a route is estimated, by
    default, at the batch its clients actually send (:meth:`served_batch`, from :meth:`record_request`): an
    estimate at the profiled batch next to a latency measured on small requests compares two different things.

    Attributes
    ----------
    block_s : list of float
        Forward seconds per block at ``batch_size``.
    exit_s : float
        Seconds of an exit head.
    in_bytes : int
        Bytes of one input sample.
    out_bytes : list of int
        Bytes of every block's output per sample.
    num_classes : int
        Logit count per sample (an exit head's output).
    batch_size : int
        The batch the times were measured at.
    hop_s : float
        RPC overhead of a stage on a node not yet observed (the controller sets it from heartbeats).
    links : dict of int to LinkProfile
        Emulated link of every node (absent: unlimited).
    window : int
        Observations kept per node.
    trim : float
        Share of the window dropped at each end before averaging (0: the mean; 0.25: the interquartile mean).
    """

    block_s: list[float]
    exit_s: float
    in_bytes: int
    out_bytes: list[int]
    num_classes: int
    batch_size: int
    hop_s: float = 0.0
    links: dict[int, LinkProfile] = field(default_factory=dict)
    window: int = 64
    trim: float = 0.25
    _speed: dict[tuple[int, int], deque[float]] = field(default_factory=dict, init=False, repr=False)
    _hop: dict[tuple[int, int], deque[float]] = field(default_factory=dict, init=False, repr=False)
    _requests: deque[int] = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")
        self._requests = deque(maxlen=self.window)

    @staticmethod
    def batch_class(batch: int) -> int:
        """The class a batch size is calibrated in: the exponent of the nearest power of two."""
        return max(0, round(math.log2(max(int(batch), 1))))

    def _key(self, node: int, batch: int | None) -> tuple[int, int]:
        return node, self.batch_class(batch or self.batch_size)

    def record_request(self, batch: int) -> None:
        """Note the batch size of a request a client sent (the estimates' default batch follows them)."""
        if batch > 0:
            self._requests.append(int(batch))

    def calibrated(self, batch: int | None = None) -> bool:
        """Whether some node's speed was learnt at ``batch``'s class (default: the profiled batch)."""
        cls = self.batch_class(batch or self.batch_size)
        return any(c == cls and values for (_, c), values in list(self._speed.items()))

    def served_batch(self) -> int:
        """The batch estimates are made at: the median of the last requests' batch sizes once forwards of that
        size were observed, else the profiled :attr:`batch_size` (calibrated by the controller's probes)."""
        if not self._requests:
            return self.batch_size
        batch = int(statistics.median_low(list(self._requests)))
        return batch if self.calibrated(batch) else self.batch_size

    def compute_s(self, start: int, stop: int, use_exit: bool, batch: int) -> float:
        """Profiled (uncalibrated) compute seconds of blocks ``[start, stop)`` (and an exit head) on ``batch``."""
        scale = batch / self.batch_size
        return sum(self.block_s[start:stop]) * scale + (self.exit_s * scale if use_exit else 0.0)

    def wire_s(self, node: int, start: int, stop: int, use_exit: bool, batch: int) -> float:
        """Seconds on ``node``'s link: the stage's input up, its output down, and the link latency both ways."""
        sent = (self.in_bytes if start == 0 else self.out_bytes[start - 1]) * batch
        got = (self.num_classes * 4 if use_exit else self.out_bytes[stop - 1]) * batch
        link = self.links.get(node, LinkProfile())
        return link.transfer_s(sent, up=True) + link.transfer_s(got, up=False) + 2 * link.latency_ms / 1000

    def observe(self, node: int, stage: Stage, batch: int, wall_s: float, compute_s: float) -> None:
        """Learn from one relayed forward: ``wall_s`` seen by the controller, ``compute_s`` reported by the node.

        Kept with the forwards of the same batch-size class only (:meth:`batch_class`): compute does not scale
        linearly across sizes, so a batch of 256 (an accuracy sweep) or of 1 never skews the estimate at 32.
        """
        key = self._key(node, batch)
        predicted = self.compute_s(stage.start, stage.stop, stage.exit, batch)
        wire = self.wire_s(node, stage.start, stage.stop, stage.exit, batch)
        if predicted > 0 and compute_s > 0:
            self._speed.setdefault(key, deque(maxlen=self.window)).append(compute_s / predicted)
        self._hop.setdefault(key, deque(maxlen=self.window)).append(max(wall_s - compute_s - wire, 0.0))

    def speed(self, node: int, batch: int | None = None) -> float:
        """``node``'s compute time relative to the profile at ``batch``'s class (default: the profiled batch;
        1.0 until observed)."""
        return _trimmed_mean(self._speed.get(self._key(node, batch)), self.trim, 1.0)

    def node_hop_s(self, node: int, batch: int | None = None) -> float:
        """``node``'s per-stage overhead at ``batch``'s class (:attr:`hop_s` until observed)."""
        return _trimmed_mean(self._hop.get(self._key(node, batch)), self.trim, self.hop_s)

    def stage_s(self, node: int, start: int, stop: int, use_exit: bool, batch: int) -> float:
        """Seconds of one stage for a batch of ``batch``."""
        compute = self.compute_s(start, stop, use_exit, batch) * self.speed(node, batch)
        return self.node_hop_s(node, batch) + compute + self.wire_s(node, start, stop, use_exit, batch)

    def estimate(self, route: Route, batch: int | None = None) -> float:
        """Estimated seconds of one request of ``batch`` samples through ``route`` (default: :meth:`served_batch`)."""
        b = batch or self.served_batch()
        return sum(self.stage_s(s.node, s.start, s.stop, s.exit, b) for s in route.stages)


def _trimmed_mean(values: deque[float] | None, trim: float, default: float) -> float:
    if not values:
        return default
    ordered = sorted(values)  # a copy: other threads keep appending
    cut = int(trim * len(ordered))
    return statistics.fmean(ordered[cut : len(ordered) - cut])


@dataclass
class DowntimeModel:
    """Downtime of a route switch.

    Attributes
    ----------
    fixed_s : float
        Per-node deploy overhead (build the skeleton, RPC).
    per_byte_s : float
        Seconds per byte of weights (encode, send, decode, load).
    switch_s : float
        Seconds to switch to a route that needs no deployment.
    links : dict of int to LinkProfile
        Emulated link of every node.
    """

    fixed_s: float = 0.02
    per_byte_s: float = 1e-8
    switch_s: float = 1e-4
    links: dict[int, LinkProfile] = field(default_factory=dict)

    def calibrate(self, samples: Sequence[tuple[int, float]]) -> None:
        """Fit ``fixed_s`` and ``per_byte_s`` on ``(bytes, seconds)`` of real deploys (least squares, clipped)."""
        if not samples:
            return
        xs = [float(b) for b, _ in samples]
        ys = [float(s) for _, s in samples]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var > 0 else 0.0
        self.per_byte_s = max(slope, 0.0)
        self.fixed_s = max(my - self.per_byte_s * mx, 0.0)

    def estimate(self, deploy_bytes: Mapping[int, int]) -> float:
        """Seconds to deploy ``deploy_bytes`` (node -> bytes) one node after another; ``switch_s`` when empty."""
        total = self.switch_s
        for node, nbytes in deploy_bytes.items():
            link = self.links.get(node, LinkProfile())
            total += self.fixed_s + nbytes * self.per_byte_s + link.transfer_s(nbytes, up=True)
        return total
