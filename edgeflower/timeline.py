"""A timeline of every phase of every batch: device compute, uplink, server compute, downlink.

Each :class:`Interval` is one phase of one (micro-)batch on one resource. Rounds report the per-phase totals as
metrics and the intervals themselves as JSON (``edgeflower plot`` draws them as a Gantt chart). Idle time of a
resource is the part of the round's span where it does nothing; a link's utilisation is the fraction of the span
during which data is in flight on it (a transfer's interval runs from its start to its arrival, so it includes the
link's latency; on an unemulated link transfers take no modelled time and the utilisation reads about 0).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

__all__ = ["PHASES", "Interval", "Timeline"]

PHASES = ("device", "uplink", "server", "downlink")
"""Resources of a split round, in the order of the data flow."""


@dataclass(frozen=True)
class Interval:
    """One phase of one batch.

    Attributes
    ----------
    phase : str
        One of :data:`PHASES`.
    start, end : float
        Seconds since the timeline's origin.
    batch : int
        Batch index in the round.
    micro : int
        Micro-batch index within the batch (0 without pipelining).
    what : str
        Detail, e.g. ``"fwd"`` or ``"bwd"`` for device compute.
    """

    phase: str
    start: float
    end: float
    batch: int = 0
    micro: int = 0
    what: str = ""

    @property
    def seconds(self) -> float:
        """Duration."""
        return self.end - self.start


class Timeline:
    """Thread-safe recorder of :class:`Interval` s relative to an origin (``perf_counter`` at creation).

    ``origin_unix`` is the same instant on the wall clock, so the server can place a node's timeline on the round's
    own clock (the node's start offset: it may start late, e.g. when the simulation runs fewer nodes at once).
    """

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.origin_unix = time.time()
        self.intervals: list[Interval] = []
        self._lock = threading.Lock()

    def add(self, phase: str, start: float, end: float, batch: int = 0, micro: int = 0, what: str = "") -> None:
        """Record a phase given absolute ``perf_counter`` times."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        iv = Interval(phase, start - self.origin, end - self.origin, batch, micro, what)
        with self._lock:
            self.intervals.append(iv)

    @contextmanager
    def span(self, phase: str, batch: int = 0, micro: int = 0, what: str = "") -> Iterator[None]:
        """Record the enclosed block as one phase."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, start, time.perf_counter(), batch, micro, what)

    def busy(self, phase: str) -> float:
        """Total seconds spent in ``phase`` (overlapping intervals of one phase are merged)."""
        return _union_length((iv.start, iv.end) for iv in self.intervals if iv.phase == phase)

    @property
    def span_s(self) -> float:
        """From the first start to the last end."""
        if not self.intervals:
            return 0.0
        return max(iv.end for iv in self.intervals) - min(iv.start for iv in self.intervals)

    def totals(self) -> dict[str, float]:
        """Per-phase busy seconds, the span, device/server idle seconds (span minus busy) and link utilisation.

        Returns
        -------
        dict of str to float
            ``<phase>-s`` for every phase, ``span-s``, ``device-idle-s``, ``server-idle-s``, and
            ``uplink-utilisation`` / ``downlink-utilisation`` (seconds with data in flight on the link over the
            span, 0 to 1).
        """
        out = {f"{p}-s": self.busy(p) for p in PHASES}
        span = self.span_s
        out["span-s"] = span
        out["device-idle-s"] = max(0.0, span - out["device-s"])
        out["server-idle-s"] = max(0.0, span - out["server-s"])
        for link in ("uplink", "downlink"):
            out[f"{link}-utilisation"] = out[f"{link}-s"] / span if span > 0 else 0.0
        return out

    def to_json(self) -> str:
        """The intervals as a compact JSON list."""
        with self._lock:
            return json.dumps([asdict(iv) for iv in self.intervals], separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> list[Interval]:
        """Parse what :meth:`to_json` wrote."""
        return [Interval(**row) for row in json.loads(text)]


def _union_length(spans: Iterable[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(spans):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total
