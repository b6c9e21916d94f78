"""A strategy wrapper that adds per-node plans to any Flower strategy and records each round.

:class:`EdgeStrategy` wraps an inner :class:`flwr.serverapp.strategy.Strategy` (``FedAvg``, ``FedProx``, a DP
wrapper, ...). It delegates sampling and aggregation to the inner strategy and only

* merges a per-node *plan* (a flat dict of config values: learning rate, split point, edge address, token ...)
  into the ``config`` record of each training message, and
* times every round and collects the per-node reply metrics, handing them to an optional recorder, and
* hands replies to the inner strategy in a fixed order (the ``partition-id`` a node reports in its ``node``
  config record, else its node ID), not in arrival order: floating-point sums depend on their order, so a run
  is then reproducible to the bit whatever order its nodes finish in.

Because replies always carry the full model, whatever the inner strategy aggregates is a complete model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from logging import INFO
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from edgeflower.strategies.wrapper import StrategyWrapper

__all__ = ["NODE_RECORD", "EdgeStrategy", "PlanFn", "RoundRecorder", "in_node_order"]

NODE_RECORD = "node"
"""Config record of a reply that identifies its node across runs (``partition-id``); used to order replies."""

PlanFn = Callable[[int, int], dict[str, Any]]
"""``plan(server_round, node_id) -> config values`` merged into that node's training config."""


class RoundRecorder(Protocol):
    """Receives what happened in each training round."""

    def on_train_round(
        self, server_round: int, seconds: float, replies: dict[int, dict[str, Any]], aggregated: dict[str, Any]
    ) -> None:
        """``replies`` maps node id to that node's reply metrics; ``aggregated`` is the inner strategy's."""


class EdgeStrategy(StrategyWrapper):
    """Wrap ``inner``, sending each node its own plan and recording each round.

    Parameters
    ----------
    inner : Strategy
        The Flower strategy that samples nodes and aggregates (e.g. ``FedAvg``).
    plan_fn : PlanFn, optional
        Per-node plan; its values are merged into the node's ``config`` record.
    recorder : RoundRecorder or sequence of RoundRecorder, optional
        Called after every aggregated training round (e.g. a run log and a planner that learns from replies).
    configrecord_key : str
        Key of the config record in training messages (Flower's default ``"config"``).
    """

    def __init__(
        self,
        inner: Strategy,
        plan_fn: PlanFn | None = None,
        recorder: RoundRecorder | Sequence[RoundRecorder] | None = None,
        configrecord_key: str = "config",
    ) -> None:
        super().__init__(inner)
        self.plan_fn = plan_fn
        if recorder is None:
            self.recorders: list[RoundRecorder] = []
        elif isinstance(recorder, Sequence):
            self.recorders = list(recorder)
        else:
            self.recorders = [recorder]
        self.configrecord_key = configrecord_key
        self._round_start: dict[int, float] = {}
        self.last_plans: dict[int, dict[str, Any]] = {}

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        log(INFO, "\t├──> EdgeStrategy wrapping %s", type(self.inner).__name__)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy sample nodes, then give each message its node's plan."""
        self._round_start[server_round] = time.perf_counter()
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.last_plans = {}
        if self.plan_fn is None:
            return messages
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            plan = self.plan_fn(server_round, node)
            self.last_plans[node] = plan
            content = RecordDict(dict(msg.content.items()))
            base = msg.content.get(self.configrecord_key, ConfigRecord())
            merged = ConfigRecord({**dict(base.items()), **plan})  # type: ignore[union-attr]
            content[self.configrecord_key] = merged
            out.append(Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node))
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the inner strategy and report the round to the recorder.

        Nodes of one round may report different metrics (one trained locally, another split, a third moved);
        Flower's strategies require identical keys, so the replies' metric records are completed with zeros for
        the keys only others reported before the inner strategy sees them (recorders get them as reported).
        """
        replies = in_node_order(replies)
        seconds = time.perf_counter() - self._round_start.pop(server_round, time.perf_counter())
        per_node: dict[int, dict[str, Any]] = {}
        for msg in replies:
            if msg.has_error():
                continue
            node = per_node.setdefault(msg.metadata.src_node_id, {})
            for record in msg.content.metric_records.values():
                node.update(dict(record.items()))
            for key, record in msg.content.config_records.items():
                if key != self.configrecord_key:
                    node.update(dict(record.items()))
        _complete_metric_keys(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        log(INFO, "round %d: %d replies in %.2f s", server_round, len(per_node), seconds)
        for recorder in self.recorders:
            recorder.on_train_round(server_round, seconds, per_node, dict(metrics.items()) if metrics else {})
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate with the inner strategy, in node order."""
        return self.inner.aggregate_evaluate(server_round, in_node_order(replies))


def in_node_order(replies: Iterable[Message]) -> list[Message]:
    """``replies`` sorted by the ``partition-id`` in their ``node`` record, then by node ID (errors last).

    Flower hands replies over in arrival order, which changes from run to run; aggregating them in a fixed order
    makes two runs of the same computation give the same global model to the bit.
    """

    def key(msg: Message) -> tuple[int, int, int]:
        if msg.has_error():
            return (2, 0, msg.metadata.src_node_id)
        record = msg.content.config_records.get(NODE_RECORD)
        if record is not None and "partition-id" in record:
            return (0, int(record["partition-id"]), msg.metadata.src_node_id)  # type: ignore[call-overload]
        return (1, 0, msg.metadata.src_node_id)

    return sorted(replies, key=key)


def _complete_metric_keys(replies: list[Message]) -> None:
    """Give every reply's metric records the union of the keys of all replies (missing values: 0)."""
    ok = [msg for msg in replies if not msg.has_error()]
    keys: set[str] = set()
    for msg in ok:
        for record in msg.content.metric_records.values():
            keys.update(record.keys())
    for msg in ok:
        for record in msg.content.metric_records.values():
            for key in keys - set(record.keys()):
                record[key] = 0.0
