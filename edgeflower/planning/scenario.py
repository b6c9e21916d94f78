"""The emulated FedAdapt testbed: 5 devices of three speed classes on Wi-Fi, with a bandwidth drop mid-run.

FedAdapt's lab had 2 Raspberry Pi 3, 2 Raspberry Pi 4 and 1 Jetson on Wi-Fi (75 Mbit/s), and cut the bandwidth to
5 Mbit/s for its changing-bandwidth experiment. Here the devices are compute slow-downs relative to this machine
and the links are per-node :class:`LinkSchedule` objects by round. Run-config strings for the Flower app:
``device-profiles`` (one slow-down per node, e.g. ``"8,8,4,4,2"``) and ``link-schedules`` (per node, ``;``-separated;
each node's schedule is ``round:up/down/latency`` points separated by ``|``, e.g. ``"1:75/75/0|6:5/5/0"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgeflower.transport.emulation import DeviceProfile, LinkProfile, LinkSchedule

__all__ = [
    "Testbed",
    "TestbedNode",
    "fedadapt_testbed",
    "format_link_schedules",
    "parse_link_schedules",
]


@dataclass(frozen=True)
class TestbedNode:
    """One emulated device: a name, a compute profile and a link schedule by round."""

    name: str
    device: DeviceProfile
    link: LinkSchedule


@dataclass(frozen=True)
class Testbed:
    """A named set of emulated devices."""

    name: str
    nodes: tuple[TestbedNode, ...]

    def device_profiles(self) -> str:
        """The ``device-profiles`` run-config string (one slow-down per node)."""
        return ",".join(f"{n.device.slowdown:g}" for n in self.nodes)

    def link_schedules(self) -> str:
        """The ``link-schedules`` run-config string (see the module docstring)."""
        return format_link_schedules({i: n.link for i, n in enumerate(self.nodes)})

    def run_config(self) -> dict[str, str]:
        """Run-config entries reproducing this testbed in the Flower app."""
        return {"device-profiles": self.device_profiles(), "link-schedules": self.link_schedules()}


def fedadapt_testbed(
    drop_round: int = 6,
    wifi_mbps: float = 75.0,
    drop_mbps: float = 5.0,
    slowdowns: Mapping[str, float] | None = None,
    dropped: tuple[int, ...] = (1, 3),
) -> Testbed:
    """FedAdapt's lab on one machine.

    Parameters
    ----------
    drop_round : int
        Round from which the ``dropped`` nodes' bandwidth falls to ``drop_mbps``.
    wifi_mbps, drop_mbps : float
        Bandwidth before and after the drop (both directions, Mbit/s).
    slowdowns : mapping, optional
        Slow-down per device class ``pi3``, ``pi4``, ``jetson`` (default 8, 4, 2: a Pi 3 is about 8x slower than
        one core pair of a current x86 laptop on VGG5, a Jetson Nano about 2x).
    dropped : tuple of int
        Nodes whose bandwidth drops (default: one Pi 3 and one Pi 4).

    Returns
    -------
    Testbed
        Nodes ``pi3-a, pi3-b, pi4-a, pi4-b, jetson``.
    """
    speed = {"pi3": 8.0, "pi4": 4.0, "jetson": 2.0, **(slowdowns or {})}
    names = ["pi3-a", "pi3-b", "pi4-a", "pi4-b", "jetson"]
    wifi = LinkProfile(wifi_mbps, wifi_mbps, 0.0)
    drop = LinkProfile(drop_mbps, drop_mbps, 0.0)
    nodes = []
    for i, name in enumerate(names):
        sched = LinkSchedule(((0.0, wifi), (float(drop_round), drop))) if i in dropped else LinkSchedule.constant(wifi)
        nodes.append(TestbedNode(name, DeviceProfile(speed[name.split("-")[0]]), sched))
    return Testbed("fedadapt", tuple(nodes))


def format_link_schedules(schedules: Mapping[int, LinkSchedule]) -> str:
    """Per-node round schedules as a run-config string (nodes in index order)."""
    parts = []
    for i in sorted(schedules):
        sched = schedules[i]
        if sched.by != "round":
            raise ValueError("only round-based schedules fit in run config")
        parts.append(
            "|".join(
                f"{max(1, int(start))}:{p.uplink_mbps:g}/{p.downlink_mbps:g}/{p.latency_ms:g}"
                for start, p in sched.points
            )
        )
    return ";".join(parts)


def parse_link_schedules(spec: str) -> dict[int, LinkSchedule]:
    """Inverse of :func:`format_link_schedules`; node ``i`` gets the ``i``-th schedule. Empty string: ``{}``."""
    out: dict[int, LinkSchedule] = {}
    if not spec.strip():
        return out
    for i, node in enumerate(spec.split(";")):
        points = []
        for item in node.split("|"):
            try:
                rnd, link = item.strip().split(":")
                values = [float(v) for v in link.split("/")]
                if len(values) == 2:
                    values.append(0.0)
                if len(values) != 3:
                    raise ValueError("expected up/down[/latency]")
                points.append((float(rnd), LinkProfile(*values)))
            except ValueError as exc:
                raise ValueError(
                    f"bad link schedule point {item!r} of node {i}: {exc} (want round:up/down/latency)"
                ) from None
        out[i] = LinkSchedule(tuple(sorted(points, key=lambda p: p[0])), "round")
    return out
