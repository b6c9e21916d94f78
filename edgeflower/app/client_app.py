"""The edgeflower ClientApp: trains its node's partition as the round's plan says (``fl``, ``split``, ``pipeline``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgeflower.app.task import load_partition, load_test_set, node_loader
from edgeflower.clients.local import evaluate, make_optimizer, train_local
from edgeflower.clients.pipeline import PipelineTrainer
from edgeflower.config import AppConfig
from edgeflower.data import BatchLoader
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

app = ClientApp()


def _all_epochs(loader: BatchLoader, epochs: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return itertools.chain.from_iterable(loader.batches(e) for e in range(epochs))


def node_link(cfg: AppConfig, partition_id: int, server_round: int) -> LinkProfile:
    """The emulated link of a node in a round (``link-trace`` overrides ``link-profiles``)."""
    if cfg.link_trace:
        return LinkSchedule.load(cfg.link_trace).at(server_round)
    return profile_for(parse_profiles(cfg.link_profiles, "link"), partition_id, LinkProfile())


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
    lr = float(config.get("lr", cfg.lr))
    model = cfg.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = node_loader(cfg, data, server_round, pid)
    device = node_device(cfg, pid)
    k = int(config.get("split-point", model.num_blocks))
    content = RecordDict()
    if k < model.num_blocks:
        link = EmulatedLink(node_link(cfg, pid, server_round))
        m = int(config.get("microbatches", 1))
        trainer = PipelineTrainer(model, k, OptimizerSettings(lr, cfg.momentum, cfg.weight_decay), m, device, link)
        token = str(config["edge-token"])
        with EdgeClient(str(config["edge-address"])) as client:
            result = trainer.train(
                _all_epochs(loader, cfg.local_epochs),
                lambda kk, tail, opt: client.open_session(token, model.spec, kk, tail, opt),
            )
        metrics = result.metrics()
        metrics["measured-iter-s"] = result.seconds / max(1, result.traffic.get("batches", 1))
        if "predicted-iter-s" in config:
            metrics["predicted-iter-s"] = float(config["predicted-iter-s"])
        content["timeline"] = ConfigRecord({"timeline": result.timeline.to_json(), "edge-address": client.address})
        if result.fell_back:
            content["fallback"] = ConfigRecord({"fallback-reason": result.fallback_reason})
    else:
        optimizer = make_optimizer(model.parameters(), lr, cfg.momentum, cfg.weight_decay)
        res = train_local(model, _all_epochs(loader, cfg.local_epochs), optimizer, slowdown=device.slowdown)
        metrics = {
            "num-examples": res.num_examples,
            "train-loss": res.loss,
            "train-time-s": res.seconds,
            "device-s": res.seconds,
        }
    metrics.update({"lr": lr, "split-point": k})
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
