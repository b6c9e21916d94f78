"""A strategy wrapper that adds per-node plans to any Flower strategy and records each round.

:class:`EdgeStrategy` wraps an inner :class:`flwr.serverapp.strategy.Strategy` (``FedAvg``, ``FedProx``, a DP
wrapper, ...). It delegates sampling and aggregation to the inner strategy and only

* merges a per-node *plan* (a flat dict of config values: learning rate, split point, edge address, token ...)
  into the ``config`` record of each training message (asked one node at a time with ``plan_fn``, or once per
  round for all of the round's sampled nodes with ``round_plan_fn``), and
* times every round and collects the per-node reply metrics, handing them to an optional recorder, and
* hands replies to the inner strategy in a fixed order (the ``partition-id`` a node reports in its ``node``
  config record, else its node ID), not in arrival order: floating-point sums depend on their order, so a run
  is then reproducible to the bit whatever order its nodes finish in.

Because replies always carry the full model, whatever the inner strategy aggregates is a complete model.

Failures are loud: every round ends with a summary on the ServerApp's log (nodes that fell back to local
training, by edge server and cause, as a WARNING; nodes that failed, with their first messages, as an ERROR), and
:class:`RunFailedError` ends the run (Flower marks it failed) when a round gets no result or when more than
``max_failed_fraction`` of its nodes fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from edgeflower.strategies.wrapper import StrategyWrapper

__all__ = [
    "NODE_RECORD",
    "EdgeStrategy",
    "PlanFn",
    "RoundOutcome",
    "RoundPlanFn",
    "RoundRecorder",
    "RunFailedError",
    "failure_reason",
    "in_node_order",
]

FAILURES_SHOWN = 3
"""How many failed nodes' messages a round's summary (and the run's error) quotes."""


class RunFailedError(RuntimeError):
    """A round got no result, or more than ``max-failed-fraction`` of its nodes failed: the run fails."""


def failure_reason(msg: Message) -> str:
    """The readable reason of a failed reply: the ClientApp's exception message without Flower's wrapping."""
    reason = str(msg.error.reason or f"error code {msg.error.code}")
    marker = "occurred. Message: "  # Flower's ClientAppException in simulation
    if marker in reason:
        reason = reason.rsplit(marker, 1)[1]
    reason = reason.strip()
    if reason.endswith("'>"):
        reason = reason[:-2]
    return reason.strip() or f"error code {msg.error.code}"


@dataclass
class RoundOutcome:
    """What became of one training round's nodes.

    Attributes
    ----------
    server_round : int
        The round.
    expected : int
        Nodes sent a training message.
    failures : list of (int, str)
        ``(node id, message)`` of each node whose reply failed (or never came).
    fell_back : list of (int, str, str)
        ``(node id, edge address, cause)`` of each node that fell back to local training.
    """

    server_round: int
    expected: int
    failures: list[tuple[int, str]] = field(default_factory=list)
    fell_back: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        """Nodes whose reply can be aggregated."""
        return self.expected - len(self.failures)

    def fallback_summary(self) -> str:
        """``fell-back 2 of 4 nodes: edge 127.0.0.1:50001 unreachable`` (empty when none fell back)."""
        if not self.fell_back:
            return ""
        groups: dict[tuple[str, str], int] = {}
        for _, edge, cause in self.fell_back:
            groups[(edge, cause)] = groups.get((edge, cause), 0) + 1
        parts = [f"edge {edge} {cause}" + (f" ({n} nodes)" if n > 1 else "") for (edge, cause), n in groups.items()]
        return f"fell-back {len(self.fell_back)} of {self.expected} nodes: {'; '.join(parts)}"

    def failure_summary(self) -> str:
        """``2 of 4 nodes failed: node 17: <message>; ...`` (the first :data:`FAILURES_SHOWN` messages)."""
        if not self.failures:
            return ""
        shown = "; ".join(f"node {node}: {reason}" for node, reason in self.failures[:FAILURES_SHOWN])
        more = f" (and {len(self.failures) - FAILURES_SHOWN} more)" if len(self.failures) > FAILURES_SHOWN else ""
        return f"{len(self.failures)} of {self.expected} nodes failed: {shown}{more}"

    def check(self, max_failed_fraction: float) -> None:
        """Raise :class:`RunFailedError` when no node succeeded or more than ``max_failed_fraction`` failed."""
        if self.succeeded <= 0:
            what = self.failure_summary() or "no node was sampled"
            raise RunFailedError(f"round {self.server_round} got no result: {what}")
        if len(self.failures) > max_failed_fraction * self.expected:
            raise RunFailedError(
                f"round {self.server_round}: {self.failure_summary()} "
                f"(more than max-failed-fraction = {max_failed_fraction:g} of the nodes)"
            )


def _check_a_node_trained(
    outcome: RoundOutcome, per_node: Mapping[int, Mapping[str, Any]], trained_before: bool
) -> bool:
    """Whether a node trained this round (``num-examples`` > 0); raise :class:`RunFailedError` when replies came
    but none trained for a reason other than its DP budget (``dp-stopped``; e.g. DP nodes whose edge servers failed
    at their first batch: no non-private fallback), or because of it before any round trained (a budget too small
    for one round). Nodes out of budget after training keep the model unchanged and the run goes on."""
    if not per_node or any(m.get("num-examples", 0) for m in per_node.values()):
        return bool(per_node)
    idle = sorted(node for node, m in per_node.items() if not m.get("dp-stopped"))
    if idle:
        why = outcome.fallback_summary() or f"node(s) {idle[:FAILURES_SHOWN]} reported no examples"
        raise RunFailedError(f"round {outcome.server_round}: no node trained ({why})")
    if not trained_before:
        raise RunFailedError(
            f"round {outcome.server_round}: no node trained: every node's dp-target-epsilon is too small for even "
            "one round at this dp-noise-multiplier"
        )
    return False


NODE_RECORD = "node"
"""Config record of a reply that identifies its node across runs (``partition-id``); used to order replies."""

PlanFn = Callable[[int, int], Mapping[str, Any]]
"""``plan(server_round, node_id) -> config values`` merged into that node's training config."""

RoundPlanFn = Callable[[int, list[int]], Mapping[int, Mapping[str, Any]]]
"""``plan_round(server_round, node_ids) -> {node_id: config values}``: every sampled node's plan in one call (a
planner that groups nodes, such as FedAdapt, must see all of a round's nodes together)."""


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
    round_plan_fn : RoundPlanFn, optional
        Instead of ``plan_fn``: called once per round with the ids of the nodes the inner strategy sampled (in the
        order of its messages); must return a plan for each of them.
    recorder : RoundRecorder or sequence of RoundRecorder, optional
        Called after every aggregated training round (e.g. a run log and a planner that learns from replies).
    configrecord_key : str
        Key of the config record in training messages (Flower's default ``"config"``).
    max_failed_fraction : float
        The run fails (:class:`RunFailedError`) when more than this share of a round's nodes fail; it always fails
        when a round gets no result.
    """

    def __init__(
        self,
        inner: Strategy,
        plan_fn: PlanFn | None = None,
        recorder: RoundRecorder | Sequence[RoundRecorder] | None = None,
        configrecord_key: str = "config",
        max_failed_fraction: float = 0.5,
        round_plan_fn: RoundPlanFn | None = None,
    ) -> None:
        super().__init__(inner)
        if not 0 <= max_failed_fraction < 1:
            raise ValueError(f"max_failed_fraction must be in [0, 1), got {max_failed_fraction}")
        if plan_fn is not None and round_plan_fn is not None:
            raise ValueError("give plan_fn (one node at a time) or round_plan_fn (a round at a time), not both")
        self.max_failed_fraction = max_failed_fraction
        self._sent: dict[int, int] = {}
        self.plan_fn = plan_fn
        self.round_plan_fn = round_plan_fn
        if recorder is None:
            self.recorders: list[RoundRecorder] = []
        elif isinstance(recorder, Sequence):
            self.recorders = list(recorder)
        else:
            self.recorders = [recorder]
        self.configrecord_key = configrecord_key
        self._round_start: dict[int, float] = {}
        self._trained_once = False  # a node trained in some round of this run (checked in aggregate_train)
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
        self._sent[server_round] = len(messages)
        self.last_plans = {}
        plans = self.round_plans(server_round, [msg.metadata.dst_node_id for msg in messages])
        if plans is None:
            return messages
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            plan = dict(plans[node])
            self.last_plans[node] = plan
            content = RecordDict(dict(msg.content.items()))
            base = msg.content.get(self.configrecord_key, ConfigRecord())
            merged = ConfigRecord({**dict(base.items()), **plan})  # type: ignore[union-attr]
            content[self.configrecord_key] = merged
            out.append(Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node))
        return out

    def round_plans(self, server_round: int, node_ids: list[int]) -> Mapping[int, Mapping[str, Any]] | None:
        """The plan of each of the round's sampled nodes (``None`` without a plan function).

        Raises
        ------
        ValueError
            ``round_plan_fn`` left out a sampled node.
        """
        if self.round_plan_fn is not None:
            plans = self.round_plan_fn(server_round, list(node_ids))
            missing = [n for n in node_ids if n not in plans]
            if missing:
                raise ValueError(f"round {server_round}: round_plan_fn gave no plan for nodes {missing}")
            return plans
        if self.plan_fn is not None:
            return {node: self.plan_fn(server_round, node) for node in node_ids}
        return None

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
        outcome = self.round_outcome(server_round, replies, per_node)
        for recorder in self.recorders:
            if hasattr(recorder, "on_round_outcome"):
                recorder.on_round_outcome(outcome)
        outcome.check(self.max_failed_fraction)
        self._trained_once |= _check_a_node_trained(outcome, per_node, self._trained_once)
        _complete_metric_keys(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        log(INFO, "round %d: %d replies in %.2f s", server_round, len(per_node), seconds)
        for recorder in self.recorders:
            recorder.on_train_round(server_round, seconds, per_node, dict(metrics.items()) if metrics else {})
        return arrays, metrics

    def round_outcome(
        self, server_round: int, replies: list[Message], per_node: dict[int, dict[str, Any]]
    ) -> RoundOutcome:
        """Count the round's failed nodes and fallbacks and log the round's summary (WARNING / ERROR)."""
        expected = max(self._sent.pop(server_round, len(replies)), len(replies))
        failures = [(msg.metadata.src_node_id, failure_reason(msg)) for msg in replies if msg.has_error()]
        failures += [(-1, "no reply before the round's timeout")] * (expected - len(replies))
        fell_back = [
            (node, str(m.get("edge-address", "?")), str(m.get("fallback-cause") or "failed"))
            for node, m in per_node.items()
            if m.get("fell-back")
        ]
        outcome = RoundOutcome(server_round, expected, failures, fell_back)
        if fell_back:
            log(WARNING, "round %d: %s", server_round, outcome.fallback_summary())
        if failures:
            log(ERROR, "round %d: %s", server_round, outcome.failure_summary())
        return outcome

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
