"""ClientApp: quickstart-pytorch's training step, with the tail of the model offloaded to an edge server.

Lines marked ``# edgeflower`` are the ones added to (or changed in) the quickstart app.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgeflower import DPSettings, EdgeClient, NodeRoundDP, OptimizerSettings, SplitTrainer, build_model  # edgeflower
from edgeflower.app.plan import NodePlan  # edgeflower
from quickstart_edgeflower.task import load_data

MODEL = "quickstart_edgeflower.task:Net"  # edgeflower

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the head here and the tail on the planned edge server; FedProx's term on both sides."""
    run, cfg = context.run_config, msg.content["config"]
    net = build_model(MODEL, (1, 28, 28), 10)  # edgeflower: was Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    plan = NodePlan.from_config(cfg, net.num_blocks)  # edgeflower: split point, edge server and token, checked
    pid, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    x, y = load_data(str(run["data-dir"]), pid, parts)
    opt = OptimizerSettings(float(cfg["lr"]), momentum=0.9, proximal_mu=float(cfg["proximal-mu"]))  # edgeflower
    bs, steps = int(run["batch-size"]), int(run["max-batches"])
    dp = None
    if float(run["dp-noise-multiplier"]) > 0:  # edgeflower: DP-SGD on the device part, accounted across rounds
        settings = DPSettings("device", float(run["dp-noise-multiplier"]), float(run["dp-max-grad-norm"]), delta=1e-5)
        dp = NodeRoundDP(settings, context.state, len(y), bs, 1, steps, int(run["num-server-rounds"]), split=True)
        batches = dp.batches(x, y)
    else:
        batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, min(len(y), bs * steps), bs)]
    trainer = SplitTrainer(net, plan.split_point, opt, dp=dp.device() if dp else None)  # edgeflower
    with EdgeClient(str(plan.edge_address)) as edge:  # edgeflower
        token = str(plan.edge_token)  # edgeflower
        result = trainer.train(batches, lambda k, tail, o: edge.open_session(token, net.spec, k, tail, o))  # edgeflower
    metrics = {"train-loss": result.loss, "num-examples": result.num_examples, "fell-back": int(result.fell_back)}
    if dp is not None:
        metrics.update(dp.finish(result.server_metrics))  # edgeflower: epsilon so far
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
