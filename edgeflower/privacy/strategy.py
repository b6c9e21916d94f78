"""Server side: skip nodes whose privacy budget is exhausted, and Flower's central DP wrappers.

A node whose budget is exhausted replies with its model unchanged and ``num-examples = 0``. FedAvg weighs by
``num-examples``, so such a reply contributes nothing, but a round in which *every* reply has zero examples would
divide by zero; :class:`SkipExhausted` drops these replies before the inner strategy aggregates, and keeps the
previous global model when none is left.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from edgeflower.strategies.wrapper import StrategyWrapper

__all__ = ["SkipExhausted", "central_dp"]


def _examples(msg: Message, key: str) -> float:
    for record in msg.content.metric_records.values():
        if key in record:
            return float(record[key])  # type: ignore[arg-type]
    return 1.0


class SkipExhausted(StrategyWrapper):
    """Wrap ``inner``; replies with zero examples (nodes out of budget) are not aggregated.

    Parameters
    ----------
    inner : Strategy
        The strategy that samples and aggregates.
    weighted_by_key : str
        The metric holding a reply's example count.
    """

    def __init__(self, inner: Strategy, weighted_by_key: str = "num-examples") -> None:
        super().__init__(inner)
        self.weighted_by_key = weighted_by_key

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        log(INFO, "\t├──> SkipExhausted (DP budget) wrapping %s", type(self.inner).__name__)
        self.inner.summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies that trained; ``(None, None)`` (keep the model) when none did."""
        replies = list(replies)
        kept = [m for m in replies if m.has_error() or _examples(m, self.weighted_by_key) > 0]
        skipped = len(replies) - len(kept)
        if skipped:
            log(INFO, "round %d: %d node(s) out of privacy budget did not train", server_round, skipped)
        if not any(not m.has_error() for m in kept):
            log(INFO, "round %d: no node trained; the global model is unchanged", server_round)
            return None, None
        return self.inner.aggregate_train(server_round, kept)


def central_dp(inner: Strategy, kind: str, noise_multiplier: float, clipping_norm: float, num_sampled: int) -> Strategy:
    """Wrap ``inner`` in Flower's central DP wrapper ``kind`` (``"off"`` returns ``inner``).

    ``"server-fixed"`` is :class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`: the
    ServerApp clips each node's model update to ``clipping_norm`` and adds Gaussian noise of std
    ``noise_multiplier * clipping_norm / num_sampled`` to the aggregate. ``"client-fixed"`` is
    :class:`~flwr.serverapp.strategy.DifferentialPrivacyClientSideFixedClipping`: the nodes clip their own updates
    (:func:`edgeflower.privacy.mods.central_dp_mod` in the ClientApp) and the ServerApp adds the same noise.
    """
    if kind == "off":
        return inner
    if kind == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier, clipping_norm, num_sampled)
    if kind == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(inner, noise_multiplier, clipping_norm, num_sampled)
    raise ValueError(f"unknown central DP {kind!r}")
