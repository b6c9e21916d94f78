"""Mobility in the app: the run config's schedule, the plan entries the ServerApp sends, and what the node does.

``mobility = "0@2:0.5->1, 3@4:0.9->0"`` means: the node at position 0 (nodes sorted by id) moves in round 2 after
50 % of its batches to edge server 1; the node at position 3 moves in round 4 after 90 % to edge server 0.
``mobility-mode`` chooses ``migrate`` (FedFly) or the ``restart`` baseline. On the Deployment Engine a node whose
node config names a ``move-trigger`` file can also be moved at any time by ``edgeflower move`` (every plan carries
the round's edge servers and a migration token for each). The ServerApp learns from the replies which edge server
each node ended the round on and starts its next round there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeflower.clients.mobility import MoveOrder, MoveTrigger
from edgeflower.server.pool import EdgePool
from edgeflower.transport.client import EdgeClient

__all__ = ["MobilityTracker", "Move", "move_order_from_plan", "parse_mobility", "plan_entries", "trigger_from_plan"]

_ENTRY = re.compile(r"^\s*(\d+)\s*@\s*(\d+)\s*:\s*([0-9.]+)\s*->\s*(\d+)\s*$")


@dataclass(frozen=True)
class Move:
    """One scheduled move: node position, round, fraction of the round done, destination edge index."""

    node: int
    server_round: int
    fraction: float
    edge: int


def parse_mobility(spec: str) -> list[Move]:
    """Parse a ``mobility`` run-config value (see the module docstring); ``ValueError`` on bad entries."""
    moves = []
    for item in (s for s in spec.split(",") if s.strip()):
        match = _ENTRY.match(item)
        if not match:
            raise ValueError(
                f"bad mobility entry {item.strip()!r}: expected NODE@ROUND:FRACTION->EDGE, e.g. 0@2:0.5->1"
            )
        node, rnd, frac, edge = int(match[1]), int(match[2]), float(match[3]), int(match[4])
        if not 0.0 <= frac < 1.0 or rnd < 1:
            raise ValueError(f"bad mobility entry {item.strip()!r}: round must be >= 1 and fraction in [0, 1)")
        moves.append(Move(node, rnd, frac, edge))
    return moves


def plan_entries(
    moves: Sequence[Move],
    mode: str,
    pool: EdgePool,
    run_id: int,
    node_id: int,
    server_round: int,
    node_ids: Sequence[int],
) -> dict[str, Any]:
    """The mobility part of a node's plan: the round's edge servers with a migration token for each, the node's
    current edge index, and a scheduled move if there is one for this node and round."""
    for other in sorted(node_ids):  # first assignment in id order: node position i starts on edge i mod n
        pool.edge_of(other)
    tokens = [pool.migration_token(run_id, node_id, server_round, e) for e in range(len(pool.addresses))]
    entries: dict[str, Any] = {
        "edge-index": pool.edge_of(node_id),
        "edge-addresses": ",".join(pool.addresses),
        "move-tokens": ",".join(tokens),
    }
    position = sorted(node_ids).index(node_id) if node_id in node_ids else -1
    for move in moves:
        if move.node == position and move.server_round == server_round and move.edge != pool.edge_of(node_id):
            if move.edge >= len(pool.addresses):
                raise ValueError(f"mobility moves node {move.node} to edge {move.edge}, but there are only "
                                 f"{len(pool.addresses)} edge servers")  # fmt: skip
            entries.update({"move-edge": move.edge, "move-fraction": move.fraction, "move-mode": mode})
    return entries


def move_order_from_plan(
    plan: Mapping[str, Any], total_batches: int, connect: Callable[[str], EdgeClient] | None = None
) -> MoveOrder | None:
    """The node's scheduled move for this round, if its plan has one (``connect``: see :class:`MoveOrder`)."""
    if "move-edge" not in plan:
        return None
    edge = int(plan["move-edge"])
    addresses = str(plan["edge-addresses"]).split(",")
    tokens = str(plan["move-tokens"]).split(",")
    at = min(total_batches - 1, int(float(plan["move-fraction"]) * total_batches))
    return MoveOrder(max(at, 0), addresses[edge], tokens[edge], str(plan.get("move-mode", "migrate")), connect)


def trigger_from_plan(
    plan: Mapping[str, Any], node_config: Mapping[str, Any], connect: Callable[[str], EdgeClient] | None = None
) -> MoveTrigger | None:
    """A :class:`MoveTrigger` when the node config names a ``move-trigger`` file and the plan lists edge servers."""
    path = node_config.get("move-trigger")
    if not path or "edge-addresses" not in plan:
        return None
    return MoveTrigger(
        str(path),
        str(plan["edge-addresses"]).split(","),
        str(plan["move-tokens"]).split(","),
        int(plan.get("edge-index", 0)),
        connect,
    )


class MobilityTracker:
    """:class:`~edgeflower.strategies.edge.RoundRecorder` that moves nodes in the pool to where they ended a round.

    Parameters
    ----------
    pool : EdgePool
        The ServerApp's edge servers and node assignment.
    """

    def __init__(self, pool: EdgePool) -> None:
        self.pool = pool

    def on_train_round(
        self, server_round: int, seconds: float, replies: Mapping[int, Mapping[str, Any]], aggregated: object
    ) -> None:
        """Follow every node that reports ``moved-to-edge``."""
        for node, metrics in replies.items():
            if "moved-to-edge" in metrics and int(metrics["moved-to-edge"]) >= 0:
                self.pool.move(node, int(metrics["moved-to-edge"]))
