"""From a model to a saved portfolio in one call: (dense training,) IMP with rewinding, surgery, measurement."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeflower.data import ImageData
from edgeflower.models.splittable import SplittableModel
from edgeflower.pruning.imp import IMPConfig, SparseLevel, iterative_magnitude_pruning, train_dense
from edgeflower.pruning.measure import count_params, cpu_latency_ms, state_bytes
from edgeflower.pruning.plot import plot_pareto
from edgeflower.pruning.portfolio import Portfolio, build_portfolio
from edgeflower.training import evaluate

__all__ = ["PipelineResult", "make_portfolio", "select_levels"]


@dataclass
class PipelineResult:
    """The saved portfolio, the sparse levels it came from and where the time went.

    ``levels`` are the IMP levels that became variants (in the portfolio's order); ``trace`` has one entry per
    IMP level run (target, compression, accuracy, seconds), also those that were only steps on the way.
    """

    portfolio: Portfolio
    levels: list[SparseLevel]
    dense_s: float
    imp_s: float
    surgery_s: float
    path: Path | None
    dense_state: dict[str, torch.Tensor]
    trace: list[dict[str, Any]] = field(default_factory=list)


def select_levels(levels: Sequence[SparseLevel], targets: Sequence[float] | None) -> list[SparseLevel]:
    """The levels whose target compression is one of ``targets`` (all of them when ``targets`` is ``None``).

    Raises
    ------
    ValueError
        When a target is not one of the levels' targets.
    """
    if targets is None:
        return list(levels)
    missing = [t for t in targets if not any(math.isclose(lv.target, t, rel_tol=1e-9) for lv in levels)]
    if missing:
        raise ValueError(f"portfolio levels {missing} are not IMP targets {[lv.target for lv in levels]}")
    return [lv for lv in levels if any(math.isclose(lv.target, t, rel_tol=1e-9) for t in targets)]


def make_portfolio(
    model: SplittableModel,
    train: ImageData,
    test: ImageData | None,
    cfg: IMPConfig,
    dense_epochs: float = 0.0,
    rewind_batches: int | None = 0,
    out: str | Path | None = None,
    progress: bool = True,
    variants: Sequence[float] | None = None,
) -> PipelineResult:
    """Build (and optionally save) the portfolio of ``model``.

    Parameters
    ----------
    model : SplittableModel
        A zoo model; trained already when ``dense_epochs`` is 0 (e.g. the global model of an FL run).
    train, test : ImageData
        Retraining data and (optional) evaluation data.
    cfg : IMPConfig
        IMP schedule.
    dense_epochs : float
        Dense training first (0 = the model is trained already; IMP then rewinds to its weights).
    rewind_batches : int or None
        Rewind point: weights after this many dense batches (0 = initialisation when training here, ``None`` =
        the end of dense training).
    out : str or Path, optional
        Directory to save the portfolio (and ``pareto.png``) to.
    progress : bool
        Show progress bars.
    variants : sequence of float, optional
        The IMP targets that become variants (e.g. 2, 4 ... 256 of a 24-level schedule); default every level.
        Checked against ``cfg.compressions`` before any training.
    """
    if variants is not None:  # fail before hours of training, not after
        select_levels([SparseLevel(float(c), 0.0, {}, {}) for c in cfg.compressions], variants)
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    if dense_epochs > 0:
        rewind = train_dense(work, train, dense_epochs, cfg, rewind_batches, progress)
    else:
        rewind = copy.deepcopy(work.state_dict())
    dense_s = time.perf_counter() - t0
    dense_model: nn.Module = copy.deepcopy(work).eval()
    meta = {
        "dense": {
            "params": count_params(dense_model),
            "bytes": state_bytes(dense_model),
            "latency_ms": {b: cpu_latency_ms(dense_model, model.spec.in_shape, b) for b in (1, 32)},
            "accuracy": evaluate(dense_model, test)[1] if test is not None else None,
        },
        "imp": {
            "compressions": list(cfg.compressions),
            "retrain_epochs": cfg.retrain_epochs,
            "dense_epochs": dense_epochs,
            "rewind_batches": rewind_batches,
            "include_linear": cfg.include_linear,
            "variants": None if variants is None else [float(v) for v in variants],
        },
    }
    t1 = time.perf_counter()
    all_levels = iterative_magnitude_pruning(work, rewind, train, cfg, test, progress)
    imp_s = time.perf_counter() - t1
    trace = [
        {
            "target": lv.target,
            "compression": lv.compression,
            "accuracy": None if math.isnan(lv.accuracy) else lv.accuracy,
            "seconds": lv.seconds,
        }
        for lv in all_levels
    ]
    meta["imp"]["levels"] = trace
    levels = select_levels(all_levels, variants)
    t2 = time.perf_counter()
    portfolio = build_portfolio(levels, model.spec, test, progress=progress)
    surgery_s = sum(v.extra["surgery_s"] for v in portfolio.variants)
    portfolio.meta.update(meta)
    portfolio.meta["seconds"] = {
        "dense": dense_s,
        "imp": imp_s,
        "surgery": surgery_s,
        "measure": time.perf_counter() - t2 - surgery_s,
    }
    path = None
    if out is not None:
        path = portfolio.save(out)
        plot_pareto([(model.spec.name, portfolio)], path / "pareto.png", title=f"{model.spec.name} portfolio")
    return PipelineResult(portfolio, levels, dense_s, imp_s, surgery_s, path, dense_model.state_dict(), trace)
