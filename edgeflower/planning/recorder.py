"""Feeding a round's replies back to a :class:`~edgeflower.planning.base.Planner`.

:class:`PlanningRecorder` is a round recorder (``on_train_round``, the hook
:class:`~edgeflower.strategies.edge.EdgeStrategy` calls after each aggregated round): it lets the planner observe the
numeric reply metrics, then forwards the round to an optional inner recorder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeflower.planning.base import Planner

__all__ = ["PlanningRecorder", "numeric_metrics"]


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The int/float entries of a node's reply metrics (timelines, strings and flags dropped)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class PlanningRecorder:
    """A round recorder that first lets ``planner`` observe the replies, then forwards to ``inner``.

    Parameters
    ----------
    planner : Planner
        Learns from every node's reply metrics.
    inner : object, optional
        Another round recorder (``on_train_round``) called after the planner.
    """

    def __init__(self, planner: Planner, inner: Any | None = None) -> None:
        self.planner = planner
        self.inner = inner

    def on_train_round(
        self, server_round: int, seconds: float, replies: Mapping[int, Mapping[str, Any]], aggregated: Any
    ) -> None:
        """Feed the numeric reply metrics to the planner, then record the round with ``inner``."""
        self.planner.observe(server_round, {n: numeric_metrics(m) for n, m in replies.items()})
        if self.inner is not None:
            self.inner.on_train_round(server_round, seconds, replies, aggregated)
