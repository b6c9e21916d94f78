"""A Flower strategy that delegates everything to an inner strategy: the base of edgeflower's wrappers.

Subclasses override only what they add (e.g. per-node plans, pruning after aggregation), so any Flower strategy
(``FedAvg``, ``FedProx``, Flower's DP wrappers, another edgeflower wrapper) composes underneath, the way Flower's
own ``DifferentialPrivacyServerSideFixedClipping`` wraps a strategy.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

__all__ = ["StrategyWrapper"]


class StrategyWrapper(Strategy):
    """Delegate the four strategy steps and the summary to ``inner``.

    Parameters
    ----------
    inner : Strategy
        The wrapped Flower strategy.
    """

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the inner strategy."""
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Delegate to the inner strategy."""
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the inner strategy."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate to the inner strategy."""
        return self.inner.aggregate_evaluate(server_round, replies)
