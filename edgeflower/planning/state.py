"""The FedAdapt agent's state: per group, what its slowest device measured and where it ran.

Per group ``g`` the state holds :data:`STATE_FEATURES` numbers about the group's slowest device (by measured
iteration time):

* ``t_g``: its measured iteration time over the slowest no-offloading time of all devices (so states do not depend
  on the model's or the machine's absolute speed);
* ``s_g``: the on-device FLOP share of the split it ran;
* ``b_g``: its uplink bandwidth (measured or reported), ``log10(Mbit/s) / 4`` clipped to ``[0, 1]`` (1 Mbit/s -> 0,
  10 Gbit/s or unlimited -> 1): the signal a bandwidth drop shows up in even before a round ran offloaded;
* ``c_g``: its no-offloading iteration time over the slowest no-offloading time (its compute class); ``t_g``
  above ``c_g`` means the split it ran is measured slower than no offloading would be.

FedAdapt's state is ``(t_g, s_g)``; bandwidth and compute class are added so the policy can tell a device whose
link fell (high ``t_g``, low ``b_g``) from one that is merely slow (high ``t_g``, high ``c_g``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from edgeflower.planning.actions import SplitMapper

__all__ = ["STATE_FEATURES", "agent_state", "bandwidth_feature"]

STATE_FEATURES = 4
"""Numbers per group in the state vector."""


def bandwidth_feature(mbps: float) -> float:
    """``log10(mbps) / 4`` clipped to ``[0, 1]``; unlimited (``inf``, ``nan`` or ``<= 0``) -> 1."""
    if not math.isfinite(mbps) or mbps <= 0:
        return 1.0
    return min(1.0, max(0.0, math.log10(mbps) / 4.0))


def agent_state(
    groups: Mapping[int, int],
    times: Mapping[int, float],
    splits: Mapping[int, int],
    baselines: Mapping[int, float],
    uplinks: Mapping[int, float],
    mapper: SplitMapper,
    num_groups: int,
) -> list[float]:
    """Build the state vector ``[t_0, s_0, b_0, c_0, t_1, ...]`` of ``num_groups`` groups (see the module docstring).

    Groups without devices (fewer devices than groups) repeat the last non-empty group.

    Parameters
    ----------
    groups : mapping of node to group
        From :func:`~edgeflower.planning.kmeans.group_nodes`.
    times, splits, baselines, uplinks : mappings of node to value
        Each node's latest iteration time, the split it ran, its no-offloading iteration time and its uplink
        bandwidth in Mbit/s.
    mapper : SplitMapper
        Gives FLOP shares of split points.
    num_groups : int
        Number of groups the agent was trained for.
    """
    if not groups:
        raise ValueError("no nodes to build an agent state from")
    scale = max(baselines[n] for n in groups)
    out: list[float] = []
    last = [1.0, 1.0, 1.0, 1.0]
    for g in range(num_groups):
        members = [n for n in sorted(groups) if groups[n] == g]
        if members:
            slowest = max(members, key=lambda n: times[n])
            last = [
                times[slowest] / scale,
                mapper.share(splits[slowest]),
                bandwidth_feature(uplinks[slowest]),
                baselines[slowest] / scale,
            ]
        out.extend(last)
    return out
