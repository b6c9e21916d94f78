"""Server side: skip nodes whose privacy budget is exhausted, and Flower's central DP wrappers.

A node whose budget is exhausted replies with its model unchanged and ``num-examples = 0``. FedAvg weighs by
``num-examples``, so such a reply contributes nothing, but a round in which *every* reply has zero examples would
divide by zero; :class:`SkipExhausted` drops these replies before the inner strategy aggregates, and keeps the
previous global model when none is left.

Central DP uses Flower's own wrappers and, from Flower 1.42, Flower's own accountant
(``flwr.supercore.privacy_accounting.RdpAccountant``): :func:`central_dp` with :func:`central_accountant`.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Result,
    Strategy,
)
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyAccountant, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from edgeflower.strategies.wrapper import StrategyWrapper

__all__ = [
    "UNIT_WEIGHT_KEY",
    "CentralDPAccounting",
    "FixedSampleFedAvg",
    "SkipExhausted",
    "central_accountant",
    "central_dp",
]


def _examples(msg: Message, key: str) -> float:
    return _metric(msg, key, 1.0)


def _metric(msg: Message, key: str, default: float = 0.0) -> float:
    for record in msg.content.metric_records.values():
        if key in record:
            return float(record[key])  # type: ignore[arg-type]
    return default


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
        kept: list[Message] = []
        skipped: list[Message] = []
        for m in replies:  # one pass: Message equality would compare whole records
            (kept if m.has_error() or _examples(m, self.weighted_by_key) > 0 else skipped).append(m)
        if exhausted := sum(1 for m in skipped if _metric(m, "dp-stopped")):
            log(INFO, "round %d: %d node(s) out of privacy budget did not train", server_round, exhausted)
        if others := len(skipped) - exhausted:
            log(INFO, "round %d: %d node(s) trained no example (see the round's fallbacks)", server_round, others)
        if not any(not m.has_error() for m in kept):
            log(INFO, "round %d: no node trained; the global model is unchanged", server_round)
            return None, None
        return self.inner.aggregate_train(server_round, kept)


UNIT_WEIGHT_KEY = "central-dp-weight"
"""Reply metric (always 1) an accounted central-DP FedAvg weighs by: Flower's accountant needs uniform weights."""


class FixedSampleFedAvg(FedAvg):
    """FedAvg that samples exactly ``num_sampled`` nodes per round and weighs every reply equally.

    Flower's fixed-clipping accountant counts one Gaussian release per round over a fixed number of sampled nodes
    (noise std ``sigma * C / num_sampled`` on the mean of the clipped updates) and requires uniform FedAvg
    weights, so an accounted run cannot let ``fraction-train`` change the sample size or ``num-examples`` weigh
    the mean. Aggregation is FedAvg's own (Flower checks that it is not overridden).
    """

    def __init__(self, num_sampled: int, **kwargs: Any) -> None:
        super().__init__(min_train_nodes=num_sampled, weighted_by_key=UNIT_WEIGHT_KEY, **kwargs)
        self.num_sampled = num_sampled

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample ``num_sampled`` nodes (at least ``min_available_nodes`` online) and send them the model."""
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, self.num_sampled)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)


class CentralDPAccounting(StrategyWrapper):
    """Wrap one of Flower's accounted fixed-clipping strategies: uniform weights, per-round epsilon, clean stop.

    * every reply gets the metric ``central-dp-weight = 1`` before Flower's wrapper checks the weights;
    * after each aggregated round the cumulative client-level epsilon is logged, kept in :attr:`rounds` and added
      to the round's aggregated metrics (``central-dp-epsilon``);
    * when the next release would exceed ``max_epsilon``, Flower raises ``PrivacyBudgetExhausted`` before any
      node is sent the model; this wrapper logs it, records the round in :attr:`stopped_at` and keeps the global
      model of that moment in :attr:`arrays`, so the ServerApp ends the run there with that model
      (:meth:`stopped_result`) instead of failing.

    Parameters
    ----------
    inner : DifferentialPrivacyFixedClippingBase
        Flower's wrapper, built with an accountant.
    """

    def __init__(self, inner: DifferentialPrivacyFixedClippingBase) -> None:
        super().__init__(inner)
        self.dp_strategy = inner
        self.rounds: dict[int, float] = {}
        self.stopped_at: int | None = None
        self.arrays: ArrayRecord | None = None

    @property
    def accountant(self) -> PrivacyAccountant:
        """Flower's accountant."""
        assert self.dp_strategy.accountant is not None
        return self.dp_strategy.accountant

    def epsilon(self) -> float:
        """Cumulative client-level epsilon so far (at the accountant's delta)."""
        return float(self.accountant.get_privacy_spent().epsilon)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate; on ``PrivacyBudgetExhausted`` log, remember the round and the model, and re-raise."""
        self.arrays = arrays
        try:
            return self.inner.configure_train(server_round, arrays, config, grid)
        except PrivacyBudgetExhausted as exc:
            self.stopped_at = server_round
            log(
                WARNING,
                "central DP: training stops before round %d: %s (central-dp-target-epsilon %g); the run ends with "
                "the global model of round %d",
                server_round,
                exc,
                self.accountant.config.max_epsilon or 0.0,
                server_round - 1,
            )
            raise

    def stopped_result(self) -> Result:
        """The run's result when it stopped at the budget: the last global model."""
        if self.stopped_at is None or self.arrays is None:
            raise RuntimeError("central DP did not stop at its budget")
        result = Result()
        result.arrays = self.arrays
        return result

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weigh replies uniformly, aggregate with Flower's wrapper, record the cumulative epsilon."""
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                for record in msg.content.metric_records.values():
                    record[UNIT_WEIGHT_KEY] = 1.0
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        spent = self.accountant.get_privacy_spent()
        self.rounds[server_round] = float(spent.epsilon)
        log(
            INFO,
            "round %d: central DP client-level epsilon %.4f at delta %g after %d release(s) (%s, no amplification)",
            server_round,
            spent.epsilon,
            spent.delta,
            spent.num_releases,
            spent.accounting_method,
        )
        if metrics is not None:
            metrics["central-dp-epsilon"] = float(spent.epsilon)
        return arrays, metrics

    def summary_dict(self) -> dict[str, Any]:
        """The central-DP part of ``privacy.json``."""
        cfg = self.accountant.config
        return {
            "kind": type(self.dp_strategy).__name__,
            "noise-multiplier": self.dp_strategy.noise_multiplier,
            "clipping-norm": self.dp_strategy.clipping_norm,
            "num-sampled": self.dp_strategy.num_sampled_clients,
            "delta": cfg.target_delta,
            "target-epsilon": cfg.max_epsilon or 0.0,
            "sampling-method": cfg.sampling_method.value,
            "neighboring-relation": cfg.neighboring_relation.value,
            "accountant": "flwr RdpAccountant",
            "epsilon": self.epsilon(),
            "stopped-at-round": self.stopped_at,
            "rounds": {str(r): e for r, e in sorted(self.rounds.items())},
        }


def central_accountant(delta: float, population: int, target_epsilon: float) -> RdpAccountant:
    """Flower's RDP accountant for a fixed-clipping central-DP run.

    Sampling: ``no-amplification`` (Flower's only choice for fixed clipping, and the truth: the ServerApp samples
    a fixed set of nodes each round, which is not secret), neighbouring relation: add or remove one client.
    ``target_epsilon = 0`` means no budget.
    """
    config = PrivacyConfig(
        target_delta=delta,
        population_size=population,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=target_epsilon or None,
    )
    return RdpAccountant(config)


def central_dp(
    inner: Strategy,
    kind: str,
    noise_multiplier: float,
    clipping_norm: float,
    num_sampled: int,
    accountant: PrivacyAccountant | None = None,
) -> Strategy:
    """Wrap ``inner`` in Flower's central DP wrapper ``kind`` (``"off"`` returns ``inner``).

    ``"server-fixed"`` is :class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`: the
    ServerApp clips each node's model update to ``clipping_norm`` and adds Gaussian noise of std
    ``noise_multiplier * clipping_norm / num_sampled`` to the aggregate. ``"client-fixed"`` is
    :class:`~flwr.serverapp.strategy.DifferentialPrivacyClientSideFixedClipping`: the nodes clip their own updates
    (:func:`edgeflower.privacy.mods.central_dp_mod` in the ClientApp) and the ServerApp adds the same noise.

    With ``accountant`` (:func:`central_accountant`), ``inner`` must be a plain :class:`FedAvg`; it is replaced by
    a :class:`FixedSampleFedAvg` with the same settings (exactly ``num_sampled`` nodes per round, equal weights)
    and the result is a :class:`CentralDPAccounting` that reports the cumulative client-level epsilon and stops
    cleanly at the accountant's ``max_epsilon``.
    """
    if kind == "off":
        return inner
    if kind not in ("server-fixed", "client-fixed"):
        raise ValueError(f"unknown central DP {kind!r}")
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if kind == "server-fixed"
        else DifferentialPrivacyClientSideFixedClipping
    )
    if accountant is None:
        return wrapper(inner, noise_multiplier, clipping_norm, num_sampled)
    if type(inner) is not FedAvg:
        raise ValueError(f"central DP accounting needs a plain FedAvg, got {type(inner).__name__}")
    fixed = FixedSampleFedAvg(
        num_sampled,
        fraction_train=inner.fraction_train,
        fraction_evaluate=inner.fraction_evaluate,
        min_evaluate_nodes=inner.min_evaluate_nodes,
        min_available_nodes=inner.min_available_nodes,
        arrayrecord_key=inner.arrayrecord_key,
        configrecord_key=inner.configrecord_key,
    )
    return CentralDPAccounting(wrapper(fixed, noise_multiplier, clipping_norm, num_sampled, accountant=accountant))
