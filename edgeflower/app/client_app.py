"""The edgeflower ClientApp: trains its node's partition as the round's plan says."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgeflower.app.task import load_partition, load_test_set, node_loader
from edgeflower.clients.local import evaluate, make_optimizer, train_local
from edgeflower.config import AppConfig

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global model, train it locally for ``local-epochs``, reply with the model and timings."""
    cfg = AppConfig.from_run_config(context.run_config)
    data = load_partition(cfg, context.node_config)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 1))
    lr = float(config.get("lr", cfg.lr))
    model = cfg.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = make_optimizer(model.parameters(), lr, cfg.momentum, cfg.weight_decay)
    loader = node_loader(cfg, data, server_round, int(context.node_config["partition-id"]))
    examples, loss_sum, seconds = 0, 0.0, 0.0
    for epoch in range(cfg.local_epochs):
        res = train_local(model, loader.batches(epoch), optimizer)
        examples += res.num_examples
        loss_sum += res.loss * res.num_examples
        seconds += res.seconds
    metrics = MetricRecord(
        {
            "num-examples": examples,
            "train-loss": loss_sum / max(examples, 1),
            "device-compute-s": seconds,
            "lr": lr,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
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
