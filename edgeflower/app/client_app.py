"""The edgeflower ClientApp: trains its node's partition as the round's :class:`~edgeflower.app.plan.NodePlan` says
(``fl``, ``split``, ``pipeline``)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgeflower.app.mobility import move_order_from_plan, trigger_from_plan
from edgeflower.app.plan import Mobility, NodePlan
from edgeflower.app.task import load_partition, load_test_set, node_loader
from edgeflower.config import AppConfig, ConfigError
from edgeflower.data import BatchLoader
from edgeflower.device.mobility import MoveOrder
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.sessions import EdgeSessions
from edgeflower.planning.scenario import parse_link_schedules
from edgeflower.privacy.mods import central_dp_mod
from edgeflower.privacy.node import NodeRoundDP
from edgeflower.progress import BatchProgress
from edgeflower.strategies.edge import NODE_RECORD
from edgeflower.training import evaluate, train_local
from edgeflower.training import sgd as proximal_sgd
from edgeflower.transport.client import EdgeClient
from edgeflower.transport.emulation import (
    DeviceProfile,
    EmulatedLink,
    LinkProfile,
    LinkSchedule,
    parse_profiles,
    profile_for,
)
from edgeflower.transport.messages import OptimizerSettings

app = ClientApp(mods=[central_dp_mod])  # Flower's client-side clipping when central-dp = "client-fixed"

PER_NODE_KEYS = (
    "uplink-mbps",
    "downlink-mbps",
    "split-point",
    "microbatches",
    "moved-to-edge",
    "migration-s",
    "migration-bytes",
    "migration-resumed",
    "restart-s",
    "restart-batches",
)
"""Reply values that describe a node (its link, its plan, where it moved and what the move cost): sent in its
config record, never averaged (the mean of a 75 and a 5 Mbit/s link, or of edge indices, means nothing; one node's
migration time averaged with the zeros of the nodes that did not move is no node's)."""


def _all_epochs(loader: BatchLoader, epochs: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return itertools.chain.from_iterable(loader.batches(e) for e in range(epochs))


def move_metrics(move: MoveOrder | None, mobility: Mobility | None) -> dict[str, float]:
    """What a move cost and where the node ended the round (``moved-to-edge = -1``: it did not move).

    A device that tried to move is near its destination even when the migration failed and it finished the round
    locally, so the destination is reported either way and the ServerApp starts its next round there.
    """
    if move is None or mobility is None:
        return {"moved-to-edge": -1}
    edge = mobility.edge_addresses.index(move.destination)
    return {"moved-to-edge": edge, **{k: float(v) for k, v in move.report.items()}}


def node_link(cfg: AppConfig, partition_id: int, server_round: int) -> LinkProfile:
    """The emulated link of a node in a round (``link-schedules`` over ``link-trace`` over ``link-profiles``)."""
    schedules = parse_link_schedules(cfg.link_schedules)
    if schedules:
        return schedules[partition_id % len(schedules)].at(server_round)
    if cfg.link_trace:
        return LinkSchedule.load(cfg.link_trace).at(server_round)
    return profile_for(parse_profiles(cfg.link_profiles, "link"), partition_id, LinkProfile())


def edge_connector(cfg: AppConfig, node_config: Mapping[str, Any]) -> Callable[[str], EdgeClient]:
    """How this node connects to edge servers: TLS with ``edge-root-cert`` (the node config's, even empty, over the
    run config's) for external edge servers, else plaintext (in-process edge servers listen on plaintext loopback).

    Raises
    ------
    ConfigError
        If the certificate file does not exist.
    """
    path = str(node_config.get("edge-root-cert", cfg.edge_root_cert)) if cfg.edge_addresses else ""
    if path and not Path(path).is_file():
        raise ConfigError("edge-root-cert", f"{path!r} does not exist on this node")
    root_cert = Path(path).read_bytes() if path else None
    limit = cfg.max_message_bytes(cfg.build_model())  # sized from the model, as the ServerApp sizes its edge servers
    return lambda address: EdgeClient(address, root_cert, max_message_bytes=limit, wire_dtype=cfg.wire_dtype)


def node_device(cfg: AppConfig, partition_id: int) -> DeviceProfile:
    """The emulated compute speed of a node."""
    return profile_for(parse_profiles(cfg.device_profiles, "device"), partition_id, DeviceProfile())


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global model, train it (locally or split) for ``local-epochs``, reply with the model and timings."""
    cfg = AppConfig.from_run_config(context.run_config)
    data = load_partition(cfg, context.node_config)
    pid = int(context.node_config["partition-id"])
    config = msg.content["config"]
    server_round = int(config.get("server-round", 1))
    model = cfg.build_model()
    plan = NodePlan.from_config(config, num_blocks=model.num_blocks)  # PlanError (naming the key) on a bad plan
    lr = cfg.lr if plan.lr is None else float(plan.lr)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = node_loader(cfg, data, server_round, pid)
    device = node_device(cfg, pid)
    k = plan.split_point
    content = RecordDict({NODE_RECORD: ConfigRecord({"partition-id": pid})})  # the server aggregates in this order
    dp = None
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = _all_epochs(loader, cfg.local_epochs)
    if cfg.dp != "off":
        dp = NodeRoundDP(
            cfg.dp_settings, context.state, len(data), cfg.batch_size, cfg.local_epochs, cfg.max_batches,
            cfg.num_rounds, split=k < model.num_blocks,
        )  # fmt: skip
        if dp.exhausted(f"node {pid}"):
            metrics = {"num-examples": 0, "train-loss": 0.0, "train-time-s": 0.0, **dp.stopped_metrics()}
            metrics.update({"lr": lr, "split-point": k})
            node_info = {key: metrics.pop(key) for key in PER_NODE_KEYS if key in metrics}  # as a trained reply's
            content[NODE_RECORD] = ConfigRecord({"partition-id": pid, **node_info})
            content["arrays"] = ArrayRecord(model.state_dict())
            content["metrics"] = MetricRecord(metrics)
            content["dp"] = dp.scope_record()
            return Message(content=content, reply_to=msg)
        batches = dp.batches(data.x, data.y)  # Poisson masks from the OS's CSPRNG, never from the run config
        content["dp"] = dp.scope_record()  # dp-scope: what the node's epsilon covers (head or model)
    if plan.offloads(model.num_blocks):
        link = EmulatedLink(node_link(cfg, pid, server_round))
        m = plan.micro_batches
        mu = float(config.get("proximal-mu", 0.0))  # Flower's FedProx: each side adds its part of the term
        settings = OptimizerSettings(lr, cfg.momentum, cfg.weight_decay, mu)
        expected = len(batches) if hasattr(batches, "__len__") else len(loader) * cfg.local_epochs
        connect = edge_connector(cfg, context.node_config)
        with connect(str(plan.edge_address)) as client:
            trainer = PipelineTrainer(
                model,
                k,
                settings,
                m,
                device,
                link,
                dp=dp.device() if dp else None,
                replay_limit_mb=cfg.fallback_replay_mb,
                fallback=cfg.fallback,
                # dp = full (tail params set): the edge server trains the tail privately too, also after a restart
                open_session=EdgeSessions(client, str(plan.edge_token), model.spec, dp.tail_params() if dp else None),
                move_order=move_order_from_plan(plan.mobility, len(loader) * cfg.local_epochs, connect),
                move_trigger=trigger_from_plan(plan.mobility, context.node_config, connect),
                progress=BatchProgress(f"round {server_round}, partition {pid} (split k={k}, m={m})", expected),
            )
            result = trainer.train(batches)
        metrics = result.metrics()
        metrics.update(move_metrics(trainer.last_move, plan.mobility))
        metrics.update({"uplink-mbps": link.profile.uplink_mbps, "downlink-mbps": link.profile.downlink_mbps})
        if dp is not None:
            metrics.update(dp.finish(result.server_metrics, session_failed=result.fell_back))
        metrics["measured-iter-s"] = result.seconds / max(1, result.traffic.get("batches", 1))
        content["timeline"] = ConfigRecord(
            {
                "timeline": result.timeline.to_json(),
                "timeline-origin-unix": result.timeline.origin_unix,  # places it on the round's clock
                "edge-address": client.address,
            }
        )
        if result.fell_back:
            content["fallback"] = ConfigRecord(
                {"fallback-reason": result.fallback_reason, "fallback-cause": result.fallback_cause}
            )
    else:
        optimizer: torch.optim.Optimizer = proximal_sgd(  # plain SGD unless Flower's FedProx sent proximal-mu
            model.parameters(), lr, cfg.momentum, cfg.weight_decay, float(config.get("proximal-mu", 0.0))
        )
        hooks = None
        if dp is not None:  # DP-SGD on the whole model; its state dict stays free of Opacus' prefixes
            optimizer, hooks, _ = dp.device().wrap(model, optimizer)
        started_unix = time.time()
        try:
            res = train_local(model, batches, optimizer, slowdown=device.slowdown)
        finally:
            if hooks is not None:
                hooks.remove_hooks()
        content["timeline"] = ConfigRecord({"timeline-origin-unix": started_unix})  # its bar in the Gantt chart
        link_now = node_link(cfg, pid, server_round)
        metrics = {
            "num-examples": res.num_examples,
            "train-loss": res.loss,
            "train-time-s": res.seconds,
            "device-s": res.seconds,
            "batches": len(loader) * cfg.local_epochs,
            "uplink-mbps": link_now.uplink_mbps,
            "downlink-mbps": link_now.downlink_mbps,
        }
        if dp is not None:
            metrics.update(dp.finish())
    if plan.predicted_iter_s is not None:  # PiPar's prediction, next to what was measured
        metrics["predicted-iter-s"] = plan.predicted_iter_s
        metrics.setdefault("measured-iter-s", metrics["train-time-s"] / max(1, int(metrics.get("batches", 1))))
    metrics.update({"lr": lr, "split-point": k})
    # what describes this node rather than measures its training does not average across nodes: it travels in the
    # node's config record (recorders and planners still see it per node; Flower's strategies never average it)
    node_info = {key: metrics.pop(key) for key in PER_NODE_KEYS if key in metrics}
    content[NODE_RECORD] = ConfigRecord({"partition-id": pid, **node_info})
    content["arrays"] = ArrayRecord(model.state_dict())
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the test split (federated evaluation)."""
    cfg = AppConfig.from_run_config(context.run_config)
    model = cfg.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = load_test_set(cfg)
    with torch.no_grad():
        loss, acc = evaluate(model, data)
    metrics = MetricRecord({"num-examples": len(data), "eval-loss": loss, "eval-accuracy": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
