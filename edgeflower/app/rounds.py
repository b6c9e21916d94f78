"""The ServerApp's plan of a round: ask the planner once for all of the round's nodes, then give each node its
:class:`~edgeflower.app.plan.NodePlan` (learning rate, split point, micro-batches; for a node that offloads, its edge
server, session token and where it may move).

:class:`RoundPlans` is the ``round_plan_fn`` of :class:`~edgeflower.strategies.edge.EdgeStrategy`, which calls it
once per round with the nodes the inner strategy sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from edgeflower.app.mobility import Move, mobility_plan
from edgeflower.app.plan import ConfigValue, NodePlan
from edgeflower.edge.pool import EdgePool
from edgeflower.planning.base import Planner

__all__ = ["RoundPlans"]


@dataclass
class RoundPlans:
    """Every sampled node's plan for a round, from one question to the planner.

    Parameters
    ----------
    planner : Planner
        Chooses each node's split point and micro-batch count.
    num_blocks : int
        Blocks of the model (a split point below it offloads).
    lr_at : callable
        ``server_round -> learning rate``.
    pool : EdgePool, optional
        The edge servers (``None``: the run never offloads).
    run_id : int
        The Flower run (tokens are scoped to it).
    moves : sequence of Move
        The run's mobility schedule.
    move_mode : str
        ``migrate`` or ``restart``.
    all_nodes : callable, optional
        ``() -> every node id`` (sampled or not: the mobility schedule names nodes by their position among all of
        them); default: the round's nodes.
    on_round : callable, optional
        ``(server_round, split point of the round's first node)``, called once per round after planning (the
        ServerApp warns there when the plan predicts a long round).
    """

    planner: Planner
    num_blocks: int
    lr_at: Callable[[int], float]
    pool: EdgePool | None = None
    run_id: int = 0
    moves: Sequence[Move] = ()
    move_mode: str = "migrate"
    all_nodes: Callable[[], Iterable[int]] | None = None
    on_round: Callable[[int, int], None] | None = None

    def plans(self, server_round: int, node_ids: Sequence[int]) -> dict[int, NodePlan]:
        """The typed plan of each of ``node_ids`` (the planner is asked once, for all of them)."""
        chosen = self.planner.plan(server_round, list(node_ids))
        everyone = sorted(self.all_nodes() if self.all_nodes is not None else node_ids)
        plans = {}
        for node in node_ids:
            split = chosen[node]
            plan = NodePlan(split.split_point, self.lr_at(server_round), split.micro_batches, split.predicted_s)
            if self.pool is not None and plan.offloads(self.num_blocks):
                mobility = mobility_plan(
                    self.moves, self.move_mode, self.pool, self.run_id, node, server_round, everyone
                )
                edge = self.pool.assign(self.run_id, node, server_round)
                plan = replace(plan, edge_address=edge.address, edge_token=edge.token, mobility=mobility)
            plans[node] = plan
        if node_ids and self.on_round is not None:
            self.on_round(server_round, plans[node_ids[0]].split_point)
        return plans

    def __call__(self, server_round: int, node_ids: Sequence[int]) -> dict[int, dict[str, ConfigValue]]:
        """:meth:`plans` as config entries (``EdgeStrategy``'s ``round_plan_fn``)."""
        return {node: plan.to_config() for node, plan in self.plans(server_round, node_ids).items()}
