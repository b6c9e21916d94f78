"""ServerApp: quickstart-pytorch's FedProx run, with edgeflower's split offloading and a pruned model portfolio.

Lines marked ``# edgeflower`` are the ones added to the quickstart app.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedProx

from edgeflower import EdgePool, EdgeStrategy, build_model, trust_reference  # edgeflower
from edgeflower.app.plan import NodePlan  # edgeflower: the plan a node follows, as typed config entries
from quickstart_edgeflower.task import load_data, test

MODEL = "quickstart_edgeflower.task:Net"  # edgeflower: the model by reference, as Flower names apps

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train with FedProx; each node trains its first ``split-point`` blocks, an edge server the rest."""
    cfg = context.run_config
    trust_reference(MODEL)  # edgeflower: in-process edge servers may build the model
    net = build_model(MODEL, (1, 28, 28), 10)  # edgeflower: the user's Net, splittable
    pools = [EdgePool.in_process(1)]  # edgeflower: an edge server in this process
    if cfg["edge-address"]:  # edgeflower: and an external `edgeflower edge-server --model ...`
        pools.append(EdgePool.external([str(cfg["edge-address"])], str(cfg["edge-secret-file"])))  # edgeflower
    nodes: list[int] = []

    def plan(server_round: int, node_id: int) -> dict:  # edgeflower: each node's split point and edge server
        nodes.append(node_id) if node_id not in nodes else None  # edgeflower
        edge = pools[nodes.index(node_id) % len(pools)].assign(context.run_id, node_id, server_round)  # edgeflower
        return NodePlan(int(cfg["split-point"]), edge_address=edge.address, edge_token=edge.token).to_config()

    strategy = EdgeStrategy(  # edgeflower: wraps the strategy the app already had
        FedProx(
            fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0, proximal_mu=float(cfg["proximal-mu"])
        ),
        plan_fn=plan,  # edgeflower
    )
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(net.state_dict()),
            train_config=ConfigRecord({"lr": float(cfg["lr"])}),
            num_rounds=int(cfg["num-server-rounds"]),
        )
    finally:
        for pool in pools:  # edgeflower
            pool.stop()  # edgeflower
    net.load_state_dict(result.arrays.to_torch_state_dict())
    x, y = load_data(str(cfg["data-dir"]), 0, 1, train=False)
    loss, acc = test(net, x[:2000], y[:2000])
    print(f"global model: test loss {loss:.4f}, test accuracy {acc:.4f}")
    if cfg["portfolio-dir"]:
        _portfolio(net, x, y, str(cfg["portfolio-dir"]))


def _portfolio(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, out: str) -> None:
    """edgeflower: a pruned portfolio of the trained model (IMP levels, exact surgery, measured)."""
    from edgeflower.data import ImageData
    from edgeflower.pruning import IMPConfig, make_portfolio

    data = ImageData(x, y, 10, "fashion-mnist")
    cfg = IMPConfig(compressions=(2.0, 4.0), retrain_epochs=1.0, batch_size=64, max_batches=3, include_linear=True)
    result = make_portfolio(net, data.subset(range(500)), data.subset(range(500, 1000)), cfg, out=out, progress=False)
    for v in result.portfolio.variants:
        print(f"portfolio variant {v.name}: {v.params} parameters, accuracy {v.accuracy:.4f}")
