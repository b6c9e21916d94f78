"""Magnitude pruning of the federated global model between rounds, as a wrapper around any Flower strategy.

:class:`PruningStrategy` delegates everything to the inner strategy; after each ``aggregate_train`` it prunes the
aggregated arrays globally by magnitude to the sparsity scheduled for that round (if any) and re-applies the
masks of earlier levels every round, so the global model stays sparse while clients keep training it densely.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from logging import INFO

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from edgeflower.pruning.magnitude import global_magnitude_masks, is_prunable, sparsity_of
from edgeflower.strategies.wrapper import StrategyWrapper

__all__ = ["PruningStrategy"]


class PruningStrategy(StrategyWrapper):
    """Wrap ``inner`` and prune the aggregated global model on a schedule.

    Parameters
    ----------
    inner : Strategy
        The Flower strategy that samples and aggregates (e.g. ``FedAvg``).
    schedule : mapping of int to float
        ``server_round -> target sparsity`` (fraction of prunable weights set to zero after that round's
        aggregation, e.g. ``{2: 0.5, 4: 0.75}``); sparsities must increase with the round.
    include_linear : bool
        Prune linear weights too (by default only convolution weights, as DNNShifter).
    """

    def __init__(self, inner: Strategy, schedule: Mapping[int, float], include_linear: bool = False) -> None:
        rounds = sorted(schedule)
        values = [float(schedule[r]) for r in rounds]
        if any(not 0.0 <= v < 1.0 for v in values) or any(b < a for a, b in itertools.pairwise(values)):
            raise ValueError(f"schedule sparsities must be in [0, 1) and non-decreasing, got {dict(schedule)}")
        super().__init__(inner)
        self.schedule = {int(r): float(schedule[r]) for r in rounds}
        self.include_linear = include_linear
        self.masks: dict[str, torch.Tensor] = {}

    def summary(self) -> None:
        """Log the schedule and the wrapped strategy's summary."""
        log(INFO, "\t├──> PruningStrategy (schedule %s) wrapping %s", self.schedule, type(self.inner).__name__)
        self.inner.summary()

    def prune(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, float]:
        """Apply this round's pruning level (if scheduled) and all masks to ``arrays``; return them and sparsity."""
        state = arrays.to_torch_state_dict()
        prunable = {k: v for k, v in state.items() if is_prunable(k, v, self.include_linear)}
        if server_round in self.schedule:
            self.masks = global_magnitude_masks(prunable, self.schedule[server_round], self.masks or None)
            log(INFO, "round %d: pruned the global model to sparsity %.3f", server_round, self.schedule[server_round])
        for k, m in self.masks.items():
            if k in state:
                state[k] = state[k] * m.to(state[k].dtype)
        sparsity = sparsity_of({k: state[k] for k in prunable})
        return ArrayRecord(state), sparsity

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the inner strategy, then prune; adds ``pruning-sparsity`` to the metrics."""
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None or (not self.masks and server_round not in self.schedule):
            return arrays, metrics
        arrays, sparsity = self.prune(server_round, arrays)
        out = MetricRecord(dict(metrics.items()) if metrics is not None else {})
        out["pruning-sparsity"] = sparsity
        return arrays, out
