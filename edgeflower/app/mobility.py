"""Mobility in the app: the run config's schedule, the :class:`~edgeflower.app.plan.Mobility` part of each node's
plan, and what the node does with it.

``mobility = "0@2:0.5->1, 3@4:0.9->0"`` means: the node at position 0 (nodes sorted by id) moves in round 2 after
50 % of its batches to edge server 1; the node at position 3 moves in round 4 after 90 % to edge server 0.
``mobility-mode`` chooses ``migrate`` (FedFly) or the ``restart`` baseline. On the Deployment Engine a node whose
node config names a ``move-trigger`` file can also be moved at any time by ``edgeflower move`` (every plan carries
the round's edge servers and a migration token for each). The ServerApp learns from the replies which edge server
each node ended the round on and starts its next round there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgeflower.app.plan import Mobility, PlannedMove
from edgeflower.device.mobility import Move, MoveOrder, MoveTrigger, parse_mobility
from edgeflower.edge.pool import EdgePool
from edgeflower.transport.client import EdgeClient

__all__ = ["MobilityTracker", "Move", "mobility_plan", "move_order_from_plan", "parse_mobility", "trigger_from_plan"]


def mobility_plan(
    moves: Sequence[Move],
    mode: str,
    pool: EdgePool,
    run_id: int,
    node_id: int,
    server_round: int,
    node_ids: Sequence[int],
) -> Mobility:
    """The mobility part of a node's plan: the round's edge servers with a migration token for each, the node's
    current edge index, and a scheduled move if there is one for this node and round (``node_ids``: every node,
    whose sorted order gives the positions the schedule names)."""
    for other in sorted(node_ids):  # first assignment in id order: node position i starts on edge i mod n
        pool.edge_of(other)
    tokens = tuple(pool.migration_token(run_id, node_id, server_round, e) for e in range(len(pool.addresses)))
    position = sorted(node_ids).index(node_id) if node_id in node_ids else -1
    planned = None
    for move in moves:
        if move.node == position and move.server_round == server_round and move.edge != pool.edge_of(node_id):
            if move.edge >= len(pool.addresses):
                raise ValueError(f"mobility moves node {move.node} to edge {move.edge}, but there are only "
                                 f"{len(pool.addresses)} edge servers")  # fmt: skip
            planned = PlannedMove(move.edge, move.fraction, mode)
    return Mobility(pool.edge_of(node_id), tuple(pool.addresses), tokens, planned)


def move_order_from_plan(
    mobility: Mobility | None, total_batches: int, connect: Callable[[str], EdgeClient] | None = None
) -> MoveOrder | None:
    """The node's scheduled move for this round, if its plan has one (``connect``: see :class:`MoveOrder`)."""
    if mobility is None or mobility.move is None:
        return None
    move = mobility.move
    at = min(total_batches - 1, int(move.fraction * total_batches))
    destination, token = mobility.edge_addresses[move.edge], mobility.move_tokens[move.edge]
    return MoveOrder(max(at, 0), destination, token, move.mode, connect)


def trigger_from_plan(
    mobility: Mobility | None, node_config: Mapping[str, Any], connect: Callable[[str], EdgeClient] | None = None
) -> MoveTrigger | None:
    """A :class:`MoveTrigger` when the node config names a ``move-trigger`` file and the plan lists edge servers."""
    path = node_config.get("move-trigger")
    if not path or mobility is None:
        return None
    return MoveTrigger(
        str(path), list(mobility.edge_addresses), list(mobility.move_tokens), mobility.edge_index, connect
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
