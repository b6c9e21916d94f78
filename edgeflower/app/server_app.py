"""The edgeflower ServerApp: FedAvg (wrapped by :class:`EdgeStrategy`) with centralised evaluation.

In ``split`` and ``pipeline`` modes it starts (or addresses) the edge servers and sends each node its plan: split
point, micro-batch count (selected per node by :class:`PiParPlanner` in ``pipeline`` mode), edge address and
session token.
"""

from __future__ import annotations

import os
import time
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from edgeflower.app.task import load_test_set
from edgeflower.clients.local import evaluate
from edgeflower.config import AppConfig
from edgeflower.models.profiler import profile_model
from edgeflower.runlog import RunLog
from edgeflower.server.pool import EdgePool
from edgeflower.strategies.edge import EdgeStrategy
from edgeflower.strategies.pipar import PiParPlanner

app = ServerApp()


def run_root(cfg: AppConfig) -> Path:
    """Where run folders go: ``run-dir``, relative paths under ``$EDGEFLOWER_RUN_ROOT`` (else the cwd)."""
    path = Path(cfg.run_dir)
    if not path.is_absolute():
        path = Path(os.environ.get("EDGEFLOWER_RUN_ROOT", ".")) / path
    return path


def start_edges(cfg: AppConfig) -> EdgePool:
    """The edge servers of a split run: external ones from ``edge-addresses``, else ``edge-servers`` in-process."""
    if cfg.edge_addresses:
        return EdgePool.external(cfg.edge_address_list, cfg.edge_secret_file)
    return EdgePool.in_process(cfg.edge_servers)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` of federated training and write the run directory."""
    cfg = AppConfig.from_run_config(context.run_config)
    torch.manual_seed(cfg.seed)
    test = load_test_set(cfg)
    model = cfg.build_model()
    runlog = RunLog(run_root(cfg), f"{time.strftime('%Y%m%d-%H%M%S')}-run{context.run_id}", cfg.to_dict())
    log(INFO, "edgeflower: %s on %s, mode=%s, run directory %s", cfg.model, cfg.dataset, cfg.mode, runlog.path)

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, test)
        runlog.update(server_round, **{"test-loss": loss, "test-accuracy": acc})
        log(INFO, "round %d/%d: test accuracy %.2f %%, loss %.4f", server_round, cfg.num_rounds, acc * 100, loss)
        return MetricRecord({"test-loss": loss, "test-accuracy": acc})

    inner = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=cfg.min_nodes,
        min_available_nodes=cfg.min_nodes,
    )
    blocks = model.num_blocks
    split_point = cfg.effective_split_point(blocks)
    planner = None
    if cfg.mode == "pipeline":
        profile = profile_model(model, batch_size=cfg.batch_size)
        planner = PiParPlanner(profile, cfg.batch_size, cfg.split_point, cfg.microbatches)
    pool = start_edges(cfg) if cfg.mode != "fl" and split_point != blocks else None

    def plan(rnd: int, node: int) -> dict[str, int | float | str]:
        entry: dict[str, int | float | str] = {"lr": cfg.lr_at(rnd), "split-point": split_point, "microbatches": 1}
        if planner is not None:
            chosen = planner.plan(node)
            entry.update(
                {
                    "split-point": chosen.split_point,
                    "microbatches": chosen.micro_batches,
                    "predicted-iter-s": chosen.predicted_s,
                }
            )
        if pool is not None and int(entry["split-point"]) < blocks:
            entry.update(pool.plan(context.run_id, node, rnd))
        return entry

    strategy = EdgeStrategy(inner, plan_fn=plan, recorder=[runlog] + ([planner] if planner else []))
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.num_rounds,
            train_config=ConfigRecord({"lr": cfg.lr}),
            evaluate_fn=central_eval,
        )
    finally:
        if pool is not None:
            pool.stop()
    torch.save(result.arrays.to_torch_state_dict(), runlog.path / "model.pt")
    runlog.finish()
    final = runlog.rows.get(cfg.num_rounds, {})
    accuracy = 100 * final.get("test-accuracy", 0.0)
    log(INFO, "edgeflower: final test accuracy %.2f %%; results in %s", accuracy, runlog.path)
