"""From the emulator's link settings to the testbed's: bandwidth goes to the kernel (tbf), latency stays in code.

The run-config keys are the emulator's own (``link-profiles``, ``link-trace``, ``link-schedules``, with the same
precedence as :func:`edgeflower.app.client_app.node_link`). ``netem`` is missing on these kernels, so the testbed
shapes only bandwidth; the latency part is handed back to the app as a latency-only ``link-schedules`` value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeflower.planning.scenario import format_link_schedules, parse_link_schedules
from edgeflower.transport.emulation import LinkProfile, LinkSchedule, parse_profiles, profile_for

__all__ = ["app_link_config", "device_schedules"]

LINK_KEYS = ("link-profiles", "link-trace", "link-schedules")


def device_schedules(run_config: Mapping[str, Any], num_devices: int) -> list[LinkSchedule]:
    """Each device's link schedule from the run config (constant schedules for ``link-profiles``)."""
    schedules = parse_link_schedules(str(run_config.get("link-schedules", "")))
    if schedules:
        return [schedules[i % len(schedules)] for i in range(num_devices)]
    trace = str(run_config.get("link-trace", ""))
    if trace:
        return [LinkSchedule.load(trace)] * num_devices
    profiles = parse_profiles(str(run_config.get("link-profiles", "")), "link")
    return [LinkSchedule.constant(profile_for(profiles, i, LinkProfile())) for i in range(num_devices)]


def app_link_config(schedules: list[LinkSchedule]) -> dict[str, str]:
    """The run-config link keys the app gets on the testbed: the same schedules with bandwidth 0 (unlimited in code;
    the kernel shapes it) and the latency kept (emulated in code). Time-based schedules keep no latency (their
    latency cannot be expressed by round)."""
    latency_only = {}
    for i, sched in enumerate(schedules):
        if sched.by == "round":
            points = tuple((start, LinkProfile(0.0, 0.0, p.latency_ms)) for start, p in sched.points)
        else:
            points = ((1.0, LinkProfile()),)
        latency_only[i] = LinkSchedule(points, "round")
    return {"link-profiles": "", "link-trace": "", "link-schedules": format_link_schedules(latency_only)}
