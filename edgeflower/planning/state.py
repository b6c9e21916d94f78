"""The FedAdapt agent's state: per group, the slowest device's iteration time and its on-device FLOP share."""

from __future__ import annotations

from collections.abc import Mapping

from edgeflower.planning.actions import SplitMapper

__all__ = ["agent_state"]


def agent_state(
    groups: Mapping[int, int],
    times: Mapping[int, float],
    splits: Mapping[int, int],
    baselines: Mapping[int, float],
    mapper: SplitMapper,
    num_groups: int,
) -> list[float]:
    """Build the state vector ``[t_0, s_0, t_1, s_1, ...]`` of ``num_groups`` groups.

    ``t_g`` is the iteration time of group ``g``'s slowest device divided by the slowest no-offloading time of
    all devices (so states do not depend on the model's or the machine's absolute speed), ``s_g`` that device's
    on-device FLOP share. Groups without devices (fewer devices than groups) repeat the last non-empty group.

    Parameters
    ----------
    groups : mapping of node to group
        From :func:`~edgeflower.planning.kmeans.group_nodes`.
    times, splits, baselines : mappings of node to value
        Each node's latest iteration time, the split it ran, and its no-offloading iteration time.
    mapper : SplitMapper
        Gives FLOP shares of split points.
    num_groups : int
        Number of groups the agent was trained for.
    """
    if not groups:
        raise ValueError("no nodes to build an agent state from")
    scale = max(baselines[n] for n in groups)
    out: list[float] = []
    last = [1.0, 1.0]
    for g in range(num_groups):
        members = [n for n in sorted(groups) if groups[n] == g]
        if members:
            slowest = max(members, key=lambda n: times[n])
            last = [times[slowest] / scale, mapper.share(splits[slowest])]
        out.extend(last)
    return out
