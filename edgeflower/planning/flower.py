"""Glue between a :class:`~edgeflower.planning.planners.Planner` and :class:`~edgeflower.strategies.EdgeStrategy`.

``EdgeStrategy`` asks for a plan one node at a time (``plan_fn(server_round, node_id)``) and hands every round's
reply metrics to a recorder. :class:`PlannedRounds` is such a ``plan_fn`` (it merges the planner's split point into
a base plan, e.g. learning rate and edge token) and :class:`PlanningRecorder` feeds the replies back to the planner
before passing them on. :func:`planner_strategy` wires both around any Flower strategy::

    planner = make_planner("exact", model, profile)
    strategy = planner_strategy(FedAvg(...), planner, base_plan_fn=plan, recorder=runlog,
                                round_nodes=lambda rnd: list(grid.get_node_ids()))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.serverapp.strategy import Strategy

from edgeflower.planning.planners import Planner
from edgeflower.strategies.edge import EdgeStrategy

__all__ = ["PlannedRounds", "PlanningRecorder", "numeric_metrics", "planner_strategy"]

PlanFn = Callable[[int, int], dict[str, Any]]


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The int/float entries of a node's reply metrics (timelines and strings dropped)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class PlannedRounds:
    """A ``plan_fn`` for :class:`EdgeStrategy` that asks ``planner`` for each node's split point.

    ``EdgeStrategy`` asks one node at a time, but a grouping planner (FedAdapt) must see all of a round's nodes
    together. So on the **first** call of a round, every node of the round is planned in one
    ``planner.plan(server_round, nodes)`` call and the result is cached: the nodes are ``round_nodes(server_round)``
    when given (e.g. ``lambda rnd: list(grid.get_node_ids())``), otherwise every node the planner has observed
    (``planner.history.nodes``), plus the asking node. A node outside that set is planned on its own later.

    Parameters
    ----------
    planner : Planner
        Chooses the split points.
    base_plan_fn : callable, optional
        ``(server_round, node_id, split_point) -> dict`` with the rest of the node's plan (learning rate, edge
        address and token ...); it gets the split point so it can skip the edge token for classic-FL nodes.
    key : str
        Config key of the split point.
    round_nodes : callable, optional
        ``server_round -> node ids`` of the round (all nodes the round may train).
    """

    def __init__(
        self,
        planner: Planner,
        base_plan_fn: Callable[[int, int, int], dict[str, Any]] | None = None,
        key: str = "split-point",
        round_nodes: Callable[[int], Iterable[int]] | None = None,
    ) -> None:
        self.planner = planner
        self.base_plan_fn = base_plan_fn
        self.key = key
        self.round_nodes = round_nodes
        self.splits: dict[int, dict[int, int]] = {}

    def _nodes_of(self, server_round: int) -> list[int]:
        if self.round_nodes is not None:
            return [int(n) for n in self.round_nodes(server_round)]
        history = getattr(self.planner, "history", None)
        return list(getattr(history, "nodes", []))

    def split_point(self, server_round: int, node_id: int) -> int:
        """The planner's split point of ``node_id`` in ``server_round`` (all the round's nodes planned at once)."""
        chosen = self.splits.get(server_round)
        if chosen is None:
            nodes = list(dict.fromkeys([*self._nodes_of(server_round), node_id]))
            chosen = self.splits[server_round] = dict(self.planner.plan(server_round, nodes))
        if node_id not in chosen:
            chosen.update(self.planner.plan(server_round, [node_id]))
        return chosen[node_id]

    def __call__(self, server_round: int, node_id: int) -> dict[str, Any]:
        k = self.split_point(server_round, node_id)
        plan = dict(self.base_plan_fn(server_round, node_id, k)) if self.base_plan_fn else {}
        plan[self.key] = k
        return plan


class PlanningRecorder:
    """A round recorder that first lets ``planner`` observe the replies, then forwards to ``inner``."""

    def __init__(self, planner: Planner, inner: Any | None = None) -> None:
        self.planner = planner
        self.inner = inner

    def on_train_round(
        self, server_round: int, seconds: float, replies: dict[int, dict[str, Any]], aggregated: dict[str, Any]
    ) -> None:
        """Feed the numeric reply metrics to the planner, then record the round with ``inner``."""
        self.planner.observe(server_round, {n: numeric_metrics(m) for n, m in replies.items()})
        if self.inner is not None:
            self.inner.on_train_round(server_round, seconds, replies, aggregated)


def planner_strategy(
    inner: Strategy,
    planner: Planner,
    base_plan_fn: Callable[[int, int, int], dict[str, Any]] | None = None,
    recorder: Any | None = None,
    round_nodes: Callable[[int], Iterable[int]] | None = None,
) -> EdgeStrategy:
    """``EdgeStrategy(inner)`` whose split points come from ``planner`` and whose replies feed it back.

    ``round_nodes`` (``server_round -> node ids``) lets :class:`PlannedRounds` plan a round's nodes together.
    """
    return EdgeStrategy(
        inner,
        plan_fn=PlannedRounds(planner, base_plan_fn, round_nodes=round_nodes),
        recorder=PlanningRecorder(planner, recorder),
    )
