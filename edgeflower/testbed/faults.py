"""What happens to the testbed's links while a run goes: round-based link schedules and injected faults.

A :class:`RunWatcher` follows the run's ServerApp log (``flwr log --stream``, inside the SuperLink's namespace) and
acts on Flower's ``[ROUND r/N]`` lines: it re-shapes each device's link to its schedule's profile for round ``r``
(``tc qdisc change``) and arms that round's :class:`Fault` objects. A fault fires *mid-round*: once the host's cable
has carried ``after_bytes`` since the round started (a device's sent bytes, an edge host's received bytes, i.e.
offload traffic is flowing), then ``after_s`` later. Every change is recorded with its time in ``events``; when the
run ends every link is plugged back and re-shaped to its schedule, so the next run starts clean.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.common.logger import log

from edgeflower.testbed.netns import NetnsError, ip
from edgeflower.transport.emulation import LinkProfile

if TYPE_CHECKING:
    from edgeflower.testbed.testbed import Testbed

__all__ = ["FAULT_KINDS", "Fault", "RunWatcher", "host_bytes"]

FAULT_KINDS = ("link-down", "bandwidth")
ROUND_LINE = re.compile(r"\[ROUND (\d+)/(\d+)\]")
POLL_S = 0.05


@dataclass(frozen=True)
class Fault:
    """A fault on one host's link in one round.

    Attributes
    ----------
    kind : str
        ``link-down`` (the host's cable is unplugged at the switch) or ``bandwidth`` (a device's link drops to
        ``mbps`` both ways, ``tc qdisc change``).
    host : str
        ``dev-<i>`` or ``edge-<i>``.
    round : int
        The round it happens in.
    after_bytes : int
        Fire once the host's cable carried this many bytes since the round began (mid-round: offload traffic runs).
    after_s : float
        Then wait this long.
    duration_s : float or None
        Undo it after this many seconds (``None``: at the end of the run).
    mbps : float
        The bandwidth of a ``bandwidth`` fault.
    max_wait_s : float
        Give up (the fault is recorded as not injected) when the trigger does not come within this time.
    """

    kind: str
    host: str
    round: int = 1
    after_bytes: int = 0
    after_s: float = 0.0
    duration_s: float | None = None
    mbps: float = 0.0
    max_wait_s: float = 180.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.kind == "bandwidth" and not (self.mbps > 0 and self.host.startswith("dev-")):
            raise ValueError("a bandwidth fault needs a device host and mbps > 0")
        if self.round < 1 or self.after_bytes < 0 or self.after_s < 0 or (self.duration_s or 0) < 0:
            raise ValueError("fault round >= 1, after_bytes, after_s, duration_s >= 0")


def host_bytes(namespace: str) -> tuple[int, int]:
    """``(received, sent)`` bytes of the host's ``eth0`` so far."""
    stats = json.loads(ip("-j", "-s", "link", "show", "eth0", ns=namespace).stdout)[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


class RunWatcher:
    """Follows one run's ServerApp log and applies the testbed's link schedules and ``faults`` (see module doc).

    Parameters
    ----------
    testbed : Testbed
        The running testbed.
    run_id : int
        The Flower run.
    faults : sequence of Fault
        Faults to inject.
    """

    def __init__(self, testbed: Testbed, run_id: int, faults: Any = ()) -> None:
        self.testbed = testbed
        self.run_id = run_id
        self.faults = list(faults)
        self.events: list[dict[str, Any]] = []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._follower: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._round = 0

    def _event(self, what: str, **details: Any) -> None:
        with self._lock:
            self.events.append({"t": round(time.monotonic() - self._t0, 3), "event": what, **details})
        log(INFO, "testbed: %s %s", what, details)

    def start(self) -> None:
        """Start following the log (a ``flwr log --stream`` process in the SuperLink's namespace)."""
        tb = self.testbed
        ns = tb.topology.host("link").namespace
        cmd = ["ip", "netns", "exec", ns, str(Path(sys.executable).parent / "flwr"), "log", str(self.run_id),
               "testbed", "--stream"]  # fmt: skip
        self._follower = subprocess.Popen(
            cmd, env=tb.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._spawn(self._follow)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="testbed-watcher")
        self._threads.append(thread)
        thread.start()

    def _follow(self) -> None:
        assert self._follower is not None and self._follower.stdout is not None
        for line in self._follower.stdout:
            match = ROUND_LINE.search(line)
            if match and not self._stop.is_set():
                self._on_round(int(match.group(1)))

    def _on_round(self, rnd: int) -> None:
        if rnd <= self._round:
            return
        self._round = rnd
        self._event("round-start", round=rnd)
        tb = self.testbed
        for i, sched in enumerate(tb.schedules):
            if sched.by != "round":
                continue
            profile = sched.at(rnd)
            host = tb.topology.host(f"dev-{i}")
            if host.link != profile:
                tb.topology.shape(host.name, profile)
                self._event(
                    "reshape", host=host.name, uplink_mbps=profile.uplink_mbps, downlink_mbps=profile.downlink_mbps
                )
        for fault in self.faults:
            if fault.round == rnd:
                self._spawn(self._inject, fault)

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the run ends first; True when the full time passed."""
        return not self._stop.wait(seconds)

    def _inject(self, fault: Fault) -> None:
        tb = self.testbed
        host = tb.topology.host(fault.host)
        try:
            base = host_bytes(host.namespace)
            deadline = time.monotonic() + fault.max_wait_s
            while not self._stop.is_set():
                rx, tx = host_bytes(host.namespace)
                carried = (tx - base[1]) if host.role == "device" else (rx - base[0])
                if carried >= fault.after_bytes:
                    break
                if time.monotonic() > deadline:
                    self._event("fault-not-injected", kind=fault.kind, host=fault.host, why="no traffic")
                    return
                time.sleep(POLL_S)
            if self._stop.is_set() or not self._wait(fault.after_s):
                self._event("fault-not-injected", kind=fault.kind, host=fault.host, why="run ended")
                return
            if fault.kind == "link-down":
                tb.set_link(fault.host, False)
            else:
                tb.topology.shape(fault.host, LinkProfile(fault.mbps, fault.mbps))
            self._event("fault-injected", kind=fault.kind, host=fault.host, round=fault.round, mbps=fault.mbps)
            if fault.duration_s is not None and self._wait(fault.duration_s):
                self._undo(fault)
        except NetnsError as exc:
            self._event("fault-error", kind=fault.kind, host=fault.host, error=str(exc))

    def _undo(self, fault: Fault) -> None:
        tb = self.testbed
        if fault.kind == "link-down":
            tb.set_link(fault.host, True)
        else:
            i = int(fault.host.split("-")[1])
            tb.topology.shape(fault.host, tb.schedules[i].at(max(1, self._round)))
        self._event("fault-undone", kind=fault.kind, host=fault.host)

    def stop(self) -> None:
        """Stop following, end pending faults, plug every link back and re-shape it to its schedule's round 1."""
        self._stop.set()
        if self._follower is not None and self._follower.poll() is None:
            self._follower.terminate()
            try:
                self._follower.wait(10)
            except subprocess.TimeoutExpired:
                self._follower.kill()
                self._follower.wait(5)
        for thread in self._threads:
            thread.join(15)
        tb = self.testbed
        try:
            for host in tb.topology.hosts:
                tb.topology.set_link(host.name, True)
            for i, sched in enumerate(tb.schedules):
                tb.topology.shape(f"dev-{i}", sched.at(1))
        except NetnsError as exc:
            log(WARNING, "testbed: could not restore the links: %s", exc)
