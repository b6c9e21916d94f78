"""The edgeflower ServerApp: FedAvg (wrapped by :class:`EdgeStrategy`) with centralised evaluation.

In ``split`` and ``pipeline`` modes it starts (or addresses) the edge servers. Once per round it asks the run's
:class:`~edgeflower.planning.base.Planner` (fixed, exact, FedAdapt, or PiPar in ``pipeline`` mode) for the round's
nodes and sends each node its :class:`~edgeflower.app.plan.NodePlan`: split point, micro-batch count, edge address
and session token, and where it may move.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from edgeflower.app.forecast import predict_round_s
from edgeflower.app.mobility import MobilityTracker, parse_mobility
from edgeflower.app.rounds import RoundPlans
from edgeflower.app.task import load_test_set
from edgeflower.config import AppConfig
from edgeflower.edge.pool import EdgePool
from edgeflower.edge.server import EdgeServerConfig
from edgeflower.models.profiler import ModelProfile, profile_model
from edgeflower.models.splittable import SplittableModel
from edgeflower.planning import Planner, PlanningRecorder, make_planner
from edgeflower.privacy.models import converts_batchnorm, log_conversion
from edgeflower.privacy.node import scope_warning
from edgeflower.privacy.strategy import CentralDPAccounting, SkipExhausted, central_accountant, central_dp
from edgeflower.privacy.summary import PrivacySummary
from edgeflower.progress import log_slow_round
from edgeflower.runlog import RunLog
from edgeflower.strategies.edge import EdgeStrategy, RunFailedError
from edgeflower.training import evaluate

app = ServerApp()


def run_root(cfg: AppConfig) -> Path:
    """Where run folders go: ``run-dir``, relative paths under ``$EDGEFLOWER_RUN_ROOT`` (else the cwd)."""
    path = Path(cfg.run_dir)
    if not path.is_absolute():
        path = Path(os.environ.get("EDGEFLOWER_RUN_ROOT", ".")) / path
    return path


def start_edges(cfg: AppConfig, max_message_bytes: int | None = None, max_model_params: int | None = None) -> EdgePool:
    """The edge servers of a split run: external ones from ``edge-addresses``, else ``edge-servers`` in-process
    (accepting messages up to ``max_message_bytes``, sized from the model like the nodes' limit, and models up to
    ``max_model_params`` parameters and buffers: what the run's model needs). Their tokens live ``round-timeout``."""
    if cfg.edge_addresses:
        pool = EdgePool.external(cfg.edge_address_list, cfg.edge_secret_file, cfg.edge_root_cert or None)
    else:
        sizes = {"max_message_bytes": max_message_bytes, "max_model_params": max_model_params}
        limits = EdgeServerConfig(**{k: v for k, v in sizes.items() if v}) if any(sizes.values()) else None
        pool = EdgePool.in_process(cfg.edge_servers, config=limits)
    pool.token_ttl_s = cfg.round_timeout
    return pool


def planner_kind(cfg: AppConfig) -> str:
    """The planner of a run: PiPar's in ``pipeline`` mode, else the run config's ``planner``."""
    return "pipar" if cfg.mode == "pipeline" else cfg.planner


def make_run_planner(cfg: AppConfig, model: SplittableModel) -> Planner:
    """The run's planner, built on a measured profile of ``model`` (one timing pass for ``fixed``, whose cost model
    only turns the nodes' reports into the forecasts the ServerApp logs; more for the planners that choose)."""
    kind = planner_kind(cfg)
    profile: ModelProfile
    if kind == "fixed":
        profile = profile_model(model, batch_size=cfg.batch_size, repeats=1)
    elif kind == "pipar":
        profile = profile_model(model, batch_size=cfg.batch_size)
    else:
        profile = profile_model(model, batch_size=cfg.batch_size, repeats=5)
    split_point = cfg.effective_split_point(model.num_blocks)
    return make_planner(
        kind,
        model,
        profile,
        policy_path=cfg.policy_path,
        num_groups=cfg.planner_groups,
        fixed_split=None if split_point < 0 else split_point,
        batch_size=cfg.batch_size,
        micro_batches=cfg.microbatches,
    )


SIMULATION_BACKEND_WAIT_S = 300.0
"""How long the ServerApp waits for the Simulation Engine's Ray backend before it starts its own work."""


def wait_for_simulation_backend(grid: Grid, timeout_s: float = SIMULATION_BACKEND_WAIT_S, poll_s: float = 0.2) -> float:
    """In Flower's Simulation Engine, wait until Ray is up before the ServerApp's heavy start; returns the wait (s).

    Flower starts the ServerApp thread first and the Ray backend next, in the same process, and Ray gives its
    raylet a fixed 30 s to register with its GCS (``ray._private.node``: "The current node timed out during
    startup"). A ServerApp that loads the test set and evaluates the initial model meanwhile (every core, for tens
    of seconds on a 2-core machine) pushes a busy machine past that window and the Simulation Runtime crashes before
    any round. So the ServerApp idles until ``ray.is_initialized()`` (the Deployment Engine has no Ray: no wait).
    """
    if type(grid).__name__ != "InMemoryGrid":  # only the Simulation Engine runs the ServerApp beside Ray
        return 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        ray = sys.modules.get("ray")
        is_initialized = getattr(ray, "is_initialized", None)  # None while another thread is still importing ray
        if is_initialized is not None and is_initialized():
            return time.monotonic() - t0
        time.sleep(poll_s)
    log(WARNING, "edgeflower: Ray is not up after %.0f s; starting anyway", timeout_s)
    return time.monotonic() - t0


def strategy_arrays(result: Any, model: torch.nn.Module) -> ArrayRecord:
    """The model to save when the strategy aggregated nothing (every round's arrays empty): never an empty state
    dict. :class:`EdgeStrategy` fails the run before that can happen; this guards the file all the same."""
    log(WARNING, "edgeflower: no round produced a model; model.pt holds the initial model")
    return ArrayRecord(model.state_dict())


def central_evaluation(
    cfg: AppConfig, model: SplittableModel, test: Any, runlog: RunLog
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The strategy's ``evaluate_fn``: the global model on the test set, logged and written to the run log."""

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, test)
        runlog.update(server_round, **{"test-loss": loss, "test-accuracy": acc})
        log(INFO, "round %d/%d: test accuracy %.2f %%, loss %.4f", server_round, cfg.num_rounds, acc * 100, loss)
        return MetricRecord({"test-loss": loss, "test-accuracy": acc})

    return central_eval


def make_inner_strategy(cfg: AppConfig) -> tuple[Strategy, CentralDPAccounting | None, PrivacySummary | None]:
    """FedAvg, wrapped in Flower's central DP when the run asks for it and guarded against nodes out of budget.

    Returns
    -------
    tuple
        ``(strategy, central, privacy)``: the strategy :class:`EdgeStrategy` wraps, the central-DP accounting
        wrapper (``None`` without an accounted central DP) and the run's privacy summary (``None`` without DP).
    """
    inner: Strategy = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=cfg.min_nodes,
        min_available_nodes=cfg.min_nodes,
    )
    accountant = None  # Flower's RdpAccountant: client-level epsilon of central DP (at dp-delta, else 1e-5)
    if cfg.central_dp != "off" and cfg.central_dp_noise_multiplier > 0:
        accountant = central_accountant(cfg.dp_delta or 1e-5, cfg.min_nodes, cfg.central_dp_target_epsilon)
    inner = central_dp(
        inner, cfg.central_dp, cfg.central_dp_noise_multiplier, cfg.central_dp_clipping_norm, cfg.min_nodes, accountant
    )
    central = inner if isinstance(inner, CentralDPAccounting) else None
    privacy = None
    if cfg.dp != "off" or central is not None:
        privacy = PrivacySummary(cfg.dp_delta, cfg.dp_target_epsilon, cfg.dp, cfg.dp_accountant, central)
    if cfg.dp != "off":
        inner = SkipExhausted(inner)  # nodes out of privacy budget reply with 0 examples: not aggregated
    return inner, central, privacy


def slow_round_warning(cfg: AppConfig, model: SplittableModel, grid: Grid) -> Callable[[int, int], None]:
    """A per-round hook that logs a forecast of the round's time when nodes are slowed down (profiled once)."""
    forecast_profile: list[ModelProfile] = []

    def warn_if_slow(rnd: int, k: int) -> None:
        if cfg.mode == "fl" and not cfg.device_profiles:
            return  # classic FL at this machine's speed: nothing is slowed down on purpose
        if not forecast_profile:
            forecast_profile.append(profile_model(model, batch_size=cfg.batch_size))
        partitions = range(len(list(grid.get_node_ids())))
        log_slow_round(predict_round_s(cfg, forecast_profile[0], {pid: k for pid in partitions}, rnd))

    return warn_if_slow


def run_strategy(
    strategy: EdgeStrategy,
    grid: Grid,
    model: SplittableModel,
    cfg: AppConfig,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord],
    central: CentralDPAccounting | None,
    pool: EdgePool | None,
) -> Result:
    """Run the rounds; a run stopped by central DP's budget ends cleanly with its last model; edge servers stop."""
    try:
        return strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.num_rounds,
            timeout=cfg.round_timeout,
            train_config=ConfigRecord({"lr": cfg.lr}),
            evaluate_fn=evaluate_fn,
        )
    except RunFailedError as exc:
        log(ERROR, "edgeflower: the run failed: %s", exc)
        raise
    except PrivacyBudgetExhausted:
        if central is None or central.stopped_at is None:
            raise
        if central.stopped_at <= 1:  # nothing trained: not a clean stop but a budget too small for one round
            exc = RunFailedError(
                "central-dp-target-epsilon is too small for even one round of central DP with this noise "
                "(central-dp-noise-multiplier): no round trained"
            )
            log(ERROR, "edgeflower: the run failed: %s", exc)
            raise exc from None
        return central.stopped_result()  # central-dp-target-epsilon reached: a clean stop with the last model
    finally:
        if pool is not None:
            pool.stop()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` of federated training and write the run directory."""
    cfg = AppConfig.from_run_config(context.run_config)
    waited = wait_for_simulation_backend(grid)
    if waited > 1.0:
        log(INFO, "edgeflower: waited %.1f s for the Simulation Engine's Ray backend", waited)
    torch.manual_seed(cfg.seed)
    test = load_test_set(cfg)
    model = cfg.build_model()
    if converts_batchnorm(cfg.dp, cfg.norm):  # every process builds the model; the run says so once, here
        log_conversion(cfg.model)
    runlog = RunLog(run_root(cfg), f"{time.strftime('%Y%m%d-%H%M%S')}-run{context.run_id}", cfg.to_dict())
    log(INFO, "edgeflower: %s on %s, mode=%s, run directory %s", cfg.model, cfg.dataset, cfg.mode, runlog.path)
    inner, central, privacy = make_inner_strategy(cfg)
    if (warning := scope_warning(cfg.dp, cfg.mode != "fl")) is not None:
        log(WARNING, "edgeflower: %s", warning)
    blocks = model.num_blocks
    split_point = cfg.effective_split_point(blocks)
    planner = make_run_planner(cfg, model)
    offloads = cfg.mode != "fl" and (split_point != blocks or planner_kind(cfg) != "fixed")
    needs = sum(t.numel() for t in model.state_dict().values())  # edge servers build nothing larger
    pool = start_edges(cfg, cfg.max_message_bytes(model), needs) if offloads else None
    plan_round = RoundPlans(  # the planner is asked once per round, for all of the round's sampled nodes
        planner,
        blocks,
        cfg.lr_at,
        pool,
        context.run_id,
        parse_mobility(cfg.mobility),
        cfg.mobility_mode,
        all_nodes=grid.get_node_ids,
        on_round=slow_round_warning(cfg, model, grid),
    )
    strategy = EdgeStrategy(
        inner,
        round_plan_fn=plan_round,
        recorder=runlog,
        max_failed_fraction=cfg.max_failed_fraction,
    )
    if planner_kind(cfg) != "fixed":  # the planners that choose learn from every round's replies
        strategy.recorders.append(PlanningRecorder(planner))
    if privacy is not None:
        strategy.recorders.append(privacy)
    if pool is not None:
        strategy.recorders.append(MobilityTracker(pool))  # the next round starts where each node ended this one
    result = run_strategy(strategy, grid, model, cfg, central_evaluation(cfg, model, test, runlog), central, pool)
    final_arrays = result.arrays if len(result.arrays) else strategy_arrays(result, model)
    torch.save(final_arrays.to_torch_state_dict(), runlog.path / "model.pt")
    runlog.finish()
    if privacy is not None:
        privacy.finish(runlog.path)
    final = runlog.rows[max(runlog.rows)] if runlog.rows else {}  # the last evaluated round (central DP may stop)
    accuracy = 100 * final.get("test-accuracy", 0.0)
    log(INFO, "edgeflower: final test accuracy %.2f %%; results in %s", accuracy, runlog.path)
