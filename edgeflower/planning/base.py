"""The one planner interface: :class:`Planner` chooses each node's :class:`SplitPlan` before a round and learns from
the round's replies after it.

Every planner implements it: :class:`~edgeflower.planning.planners.FixedPlanner`,
:class:`~edgeflower.planning.planners.ExactPlanner`, :class:`~edgeflower.planning.planners.FedAdaptPlanner` and
:class:`~edgeflower.planning.pipar.PiParPlanner`. A ServerApp asks once per round, for all of the round's nodes
together (a grouping planner such as FedAdapt must see them together), and feeds the replies back with
:class:`~edgeflower.planning.recorder.PlanningRecorder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Planner", "SplitPlan", "split_points"]


@dataclass(frozen=True)
class SplitPlan:
    """What a planner chose for one node and round.

    Attributes
    ----------
    split_point : int
        Blocks trained on the device (``num_blocks`` = no offloading, classic FL).
    micro_batches : int
        Micro-batches per batch in flight at once (``1`` = sequential split training).
    predicted_s : float or None
        The planner's predicted seconds of one batch with this plan (``None``: it predicts none).
    """

    split_point: int
    micro_batches: int = 1
    predicted_s: float | None = None

    def __post_init__(self) -> None:
        if self.split_point < 0:
            raise ValueError(f"split point must be >= 0, got {self.split_point}")
        if self.micro_batches < 1:
            raise ValueError(f"micro-batch count must be >= 1, got {self.micro_batches}")


@runtime_checkable
class Planner(Protocol):
    """Chooses split plans before a round and learns from the round's replies."""

    def plan(self, server_round: int, node_ids: Sequence[int]) -> dict[int, SplitPlan]:
        """The plan of each of ``node_ids`` for ``server_round``.

        Parameters
        ----------
        server_round : int
            The round about to start.
        node_ids : sequence of int
            All of the round's nodes (planned together).

        Returns
        -------
        dict of int to SplitPlan
            One plan per node id.
        """
        ...

    def observe(self, server_round: int, replies: Mapping[int, Mapping[str, float]]) -> None:
        """Learn from the numeric reply metrics of ``server_round`` (node id to metrics)."""
        ...


def split_points(plans: Mapping[int, SplitPlan]) -> dict[int, int]:
    """``{node: split point}`` of a round's plans."""
    return {node: plan.split_point for node, plan in plans.items()}
