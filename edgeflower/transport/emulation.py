"""Device and link emulation: reproduce a heterogeneous edge testbed on one machine.

A :class:`DeviceProfile` stretches measured compute time by a slow-down factor (a Raspberry Pi 3 is several times
slower than a laptop core). A :class:`LinkProfile` gives uplink/downlink bandwidth (Mbit/s) and one-way latency (ms),
either constant or changing with the round or with wall-clock time (a :class:`LinkSchedule`, loadable from a small
JSON/CSV trace). An :class:`EmulatedLink` applies a profile to real transfers: a transmission of ``n`` bytes holds
the link for ``8 n / bandwidth`` seconds (transfers in one direction queue behind each other, as on a real link)
and arrives ``latency`` later.

What is charged for a transfer is ``max(real, modelled)``, not their sum: the real work of moving the message over
this machine's loopback (serialisation, TLS, gRPC) happens on a real link too, overlapped with the bytes on the
wire. A sender waits for the modelled arrival before handing the message over (so the receiver sees it when the
modelled link would deliver it), and the receiver of the reply books its transfer from the moment the reply was
ready in the model (:meth:`EmulatedLink.deliver`), so the real transport time of the exchange counts towards the
modelled wire time (measured on the testbed at 50 Mbit/s: 13-90 ms per split step, depending on the machine's load,
had been charged on top of the step's modelled 0.26 s on the wire). A link that is not free yet still queues the
transfer (the booking starts when the wire is free). ``framing`` charges the headers a real link carries too.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "SYSTEM_CLOCK",
    "TCP_FRAMING",
    "Clock",
    "DeviceProfile",
    "EmulatedLink",
    "LinkProfile",
    "LinkSchedule",
    "parse_profiles",
    "profile_for",
    "wait_until",
]


class Clock(Protocol):
    """Where emulation reads the time and sleeps: the system's monotonic clock, or a test's manual clock."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        ...


class _SystemClock:
    """:func:`time.perf_counter` and :func:`time.sleep`."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK: Clock = _SystemClock()
"""The clock every emulation uses unless one is injected (tests inject a manual one)."""

TCP_FRAMING = 1514 / 1448
"""Bytes a TCP stream puts on an Ethernet link per payload byte: a full frame (1500-byte MTU + 14-byte header)
carries 1448 bytes of payload after the IP and TCP headers (with timestamps); TLS records and HTTP/2 and gRPC frames
add a few bytes per 16 kB on top."""


@dataclass(frozen=True)
class DeviceProfile:
    """Compute speed of an emulated device.

    Attributes
    ----------
    slowdown : float
        Compute takes ``slowdown`` times as long as on this machine (1.0 = this machine).
    """

    slowdown: float = 1.0

    def __post_init__(self) -> None:
        if not self.slowdown >= 1.0:
            raise ValueError(f"device slowdown must be >= 1.0, got {self.slowdown}")

    def stretch(self, measured_s: float, clock: Clock = SYSTEM_CLOCK) -> float:
        """Sleep so that ``measured_s`` of real compute lasts ``slowdown * measured_s``; return the emulated time."""
        extra = measured_s * (self.slowdown - 1.0)
        if extra > 0:
            clock.sleep(extra)
        return measured_s * self.slowdown


@dataclass(frozen=True)
class LinkProfile:
    """A link's bandwidth and latency; ``0`` bandwidth means unlimited (no emulated delay).

    Attributes
    ----------
    uplink_mbps, downlink_mbps : float
        Bandwidth device -> edge and edge -> device in Mbit/s.
    latency_ms : float
        One-way propagation latency in ms.
    """

    uplink_mbps: float = 0.0
    downlink_mbps: float = 0.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("uplink_mbps", "downlink_mbps", "latency_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"link {name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")

    def transfer_s(self, nbytes: int, up: bool) -> float:
        """Serialisation time of ``nbytes`` in one direction (without latency)."""
        mbps = self.uplink_mbps if up else self.downlink_mbps
        return 0.0 if mbps <= 0 else nbytes * 8 / (mbps * 1e6)

    @property
    def unlimited(self) -> bool:
        """True when the profile adds no delay at all."""
        return self.uplink_mbps == 0 and self.downlink_mbps == 0 and self.latency_ms == 0


@dataclass(frozen=True)
class LinkSchedule:
    """A link profile that changes by round (``by="round"``) or by seconds since start (``by="time"``).

    Parameters
    ----------
    points : sequence of (float, LinkProfile)
        Change points ``(from, profile)``, sorted by ``from``; the first applies before any change point too.
    by : str
        ``"round"`` or ``"time"``.
    """

    points: tuple[tuple[float, LinkProfile], ...]
    by: str = "round"

    def __post_init__(self) -> None:
        if self.by not in ("round", "time"):
            raise ValueError(f"link schedule 'by' must be 'round' or 'time', got {self.by!r}")
        if not self.points:
            raise ValueError("a link schedule needs at least one point")
        starts = [p[0] for p in self.points]
        if starts != sorted(starts):
            raise ValueError("link schedule points must be sorted by their start")

    @classmethod
    def constant(cls, profile: LinkProfile) -> LinkSchedule:
        """A schedule that never changes."""
        return cls(((0.0, profile),))

    def at(self, server_round: int = 1, elapsed_s: float = 0.0) -> LinkProfile:
        """The profile in force at ``server_round`` (``by="round"``) or ``elapsed_s`` (``by="time"``)."""
        x = server_round if self.by == "round" else elapsed_s
        current = self.points[0][1]
        for start, profile in self.points:
            if x >= start:
                current = profile
        return current

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], by: str) -> LinkSchedule:
        """Build from rows with ``round`` or ``time`` plus ``uplink``, ``downlink`` (Mbit/s) and ``latency`` (ms)."""
        points = []
        for row in rows:
            try:
                points.append(
                    (
                        float(row[by]),
                        LinkProfile(float(row["uplink"]), float(row["downlink"]), float(row.get("latency", 0.0))),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"bad link trace row {dict(row)!r}: needs {by}, uplink, downlink[, latency]") from exc
        return cls(tuple(sorted(points, key=lambda p: p[0])), by)

    @classmethod
    def load(cls, path: str | Path) -> LinkSchedule:
        """Load a trace: JSON ``{"by": "round"|"time", "points": [{...}, ...]}`` or a CSV with a header row
        ``round|time,uplink,downlink[,latency]``."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read link trace {p}: {exc}") from exc
        if p.suffix == ".json":
            try:
                data = json.loads(text)
                return cls.from_rows(data["points"], data.get("by", "round"))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"link trace {p} is not valid: {exc}") from exc
        rows = list(csv.DictReader(text.splitlines()))
        if not rows:
            raise ValueError(f"link trace {p} has no rows")
        by = "time" if "time" in rows[0] else "round"
        return cls.from_rows(rows, by)


class EmulatedLink:
    """Applies a :class:`LinkProfile` to real transfers, one queue per direction.

    Parameters
    ----------
    profile : LinkProfile
        Bandwidth and latency.
    clock : Clock
        Time source and sleep of the emulation (the system clock unless a test injects one).
    framing : float
        Bytes on the wire per byte of payload (>= 1): 1.0 charges the tensors' bytes only; :data:`TCP_FRAMING`
        adds the Ethernet/IP/TCP headers of full-sized frames, as a kernel-shaped link carries them.
    """

    def __init__(self, profile: LinkProfile | None = None, clock: Clock = SYSTEM_CLOCK, framing: float = 1.0) -> None:
        if not framing >= 1.0:
            raise ValueError(f"link framing must be >= 1.0 (bytes on the wire per payload byte), got {framing}")
        self.profile = profile or LinkProfile()
        self.clock = clock
        self.framing = framing
        self._lock = threading.Lock()
        self._free = {True: 0.0, False: 0.0}  # when each direction's wire is free again (perf-counter time)
        self.bytes = {True: 0, False: 0}

    def set_profile(self, profile: LinkProfile) -> None:
        """Change bandwidth/latency (e.g. at a new round)."""
        self.profile = profile

    def book(self, nbytes: int, up: bool, ready: float | None = None) -> tuple[float, float]:
        """Reserve the wire for ``nbytes`` sent at ``ready`` (default: now); return ``(start, arrival)`` times.

        The transfer starts when the message is ready and the wire is free of earlier transfers in the same
        direction, holds the wire for the serialisation time, and arrives the link latency after it leaves the
        wire. Booking does not wait: the caller waits until ``arrival`` (with :func:`wait_until`) before it hands
        the message over, so back-to-back messages overlap their latencies as on a real link.
        """
        profile = self.profile
        ready = self.clock.now() if ready is None else ready
        with self._lock:
            start = max(ready, self._free[up])
            self._free[up] = start + profile.transfer_s(nbytes, up) * self.framing
            self.bytes[up] += nbytes
            return start, self._free[up] + profile.latency_ms / 1000

    def transmit(self, nbytes: int, up: bool) -> tuple[float, float]:
        """Block for the emulated transfer of ``nbytes``; return ``(start, end)`` perf-counter times.

        Transfers in the same direction queue for the wire (serialisation time); the latency is waited without
        holding it, so messages sent back to back from several threads pipeline as on a real link.
        """
        start, arrival = self.book(nbytes, up)
        wait_until(arrival, self.clock)
        return start, self.clock.now()

    def deliver(self, nbytes: int, up: bool, ready: float) -> tuple[float, float]:
        """Charge a transfer that already went over the real channel: ``nbytes`` were ready to send at ``ready`` and
        have just been received; block until the modelled arrival; return the booked ``(start, arrival)``.

        The transfer is booked from ``ready`` (see :meth:`book`), so the message is delivered at the later of the
        modelled arrival and now: the real transfer's time (serialisation, TLS, gRPC over loopback) counts towards
        the modelled time instead of adding to it, as on a real link, where the bytes are encrypted and framed while
        earlier ones are on the wire. A transfer whose real time already exceeds the modelled time is not charged
        again.
        """
        start, arrival = self.book(nbytes, up, ready)
        wait_until(arrival, self.clock)
        return start, arrival


def wait_until(deadline: float, clock: Clock = SYSTEM_CLOCK) -> None:
    """Sleep until ``clock`` reads ``deadline`` (returns at once if it has passed)."""
    while True:
        left = deadline - clock.now()
        if left <= 0:
            return
        clock.sleep(left)


def parse_profiles(spec: str, kind: str) -> dict[int, Any]:
    """Parse a per-node profile string from run config.

    ``kind="device"``: ``"1.0,4.0,2.5"`` gives node (partition) ``i`` slow-down ``i``-th value (cycled).
    ``kind="link"``: ``"50/50/5,10/10/20"``: uplink/downlink Mbit/s and latency ms per node; ``0`` = unlimited.
    An empty string gives ``{}`` (defaults everywhere).
    """
    out: dict[int, Any] = {}
    if not spec.strip():
        return out
    for i, item in enumerate(s.strip() for s in spec.split(",")):
        try:
            if kind == "device":
                out[i] = DeviceProfile(float(item))
            elif kind == "link":
                parts = [float(v) for v in item.split("/")]
                if len(parts) == 1:
                    parts = [parts[0], parts[0], 0.0]
                if len(parts) == 2:
                    parts.append(0.0)
                if len(parts) != 3:
                    raise ValueError
                out[i] = LinkProfile(*parts)
            else:
                raise ValueError(f"unknown profile kind {kind!r}")
        except ValueError as exc:
            hint = "expected uplink/downlink/latency numbers" if kind == "link" else "expected a number >= 1"
            raise ValueError(f"bad {kind} profile {item!r}: {exc or hint}") from exc
    return out


def profile_for(profiles: Mapping[int, Any], index: int, default: Any) -> Any:
    """Profile of node ``index``, cycling through the given ones (``default`` when none are given)."""
    if not profiles:
        return default
    return profiles[index % len(profiles)]
