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

from edgeflower.app.mobility import MobilityTracker, parse_mobility, plan_entries
from edgeflower.app.task import load_test_set
from edgeflower.clients.local import evaluate
from edgeflower.config import AppConfig
from edgeflower.models.profiler import profile_model
from edgeflower.planning import make_planner
from edgeflower.planning.flower import PlanningRecorder
from edgeflower.privacy.strategy import SkipExhausted, central_dp
from edgeflower.privacy.summary import PrivacySummary
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
    inner = central_dp(
        inner, cfg.central_dp, cfg.central_dp_noise_multiplier, cfg.central_dp_clipping_norm, cfg.min_nodes
    )
    privacy = PrivacySummary(cfg.dp_delta, cfg.dp_target_epsilon, cfg.dp) if cfg.dp != "off" else None
    if privacy is not None:
        inner = SkipExhausted(inner)  # nodes out of privacy budget reply with 0 examples: not aggregated
    blocks = model.num_blocks
    split_point = cfg.effective_split_point(blocks)
    planner = None
    if cfg.mode == "pipeline":
        profile = profile_model(model, batch_size=cfg.batch_size)
        planner = PiParPlanner(profile, cfg.batch_size, cfg.split_point, cfg.microbatches)
    split_planner = None
    if cfg.planner != "fixed":  # FedAdapt: per-node split points from observations (exact optimum or the agent)
        split_planner = make_planner(
            cfg.planner,
            model,
            profile_model(model, batch_size=cfg.batch_size, repeats=5),
            policy_path=cfg.policy_path,
            num_groups=cfg.planner_groups,
            batch_size=cfg.batch_size,
        )
    offloads = cfg.mode != "fl" and (split_point != blocks or split_planner is not None)
    pool = start_edges(cfg) if offloads else None
    moves = parse_mobility(cfg.mobility)
    planned: dict[int, dict[int, int]] = {}

    def plan(rnd: int, node: int) -> dict[str, int | float | str]:
        entry: dict[str, int | float | str] = {"lr": cfg.lr_at(rnd), "split-point": split_point, "microbatches": 1}
        if split_planner is not None:
            if rnd not in planned:  # plan all of the round's nodes together (FedAdapt groups them)
                planned[rnd] = split_planner.plan(rnd, sorted(grid.get_node_ids()))
            entry["split-point"] = planned[rnd].get(node, blocks)
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
            node_ids = sorted(grid.get_node_ids())
            mobility = plan_entries(moves, cfg.mobility_mode, pool, context.run_id, node, rnd, node_ids)
            entry.update(pool.plan(context.run_id, node, rnd))
            entry.update(mobility)
        return entry

    strategy = EdgeStrategy(inner, plan_fn=plan, recorder=[runlog] + ([planner] if planner else []))
    if privacy is not None:
        strategy.recorders.append(privacy)
    if split_planner is not None:
        strategy.recorders.append(PlanningRecorder(split_planner))
    if pool is not None:
        strategy.recorders.append(MobilityTracker(pool))  # the next round starts where each node ended this one
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
    if privacy is not None:
        privacy.finish(runlog.path)
    final = runlog.rows.get(cfg.num_rounds, {})
    accuracy = 100 * final.get("test-accuracy", 0.0)
    log(INFO, "edgeflower: final test accuracy %.2f %%; results in %s", accuracy, runlog.path)
