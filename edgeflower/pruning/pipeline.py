"""From a model to a saved portfolio in one call: (dense training,) IMP with rewinding, surgery, measurement."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeflower.data import ImageData
from edgeflower.models.splittable import SplittableModel
from edgeflower.pruning.imp import IMPConfig, SparseLevel, iterative_magnitude_pruning, train_dense
from edgeflower.pruning.measure import count_params, cpu_latency_ms, state_bytes
from edgeflower.pruning.plot import plot_pareto
from edgeflower.pruning.portfolio import Portfolio, build_portfolio
from edgeflower.training import evaluate

__all__ = ["PipelineResult", "make_portfolio"]


@dataclass
class PipelineResult:
    """The saved portfolio, the sparse levels it came from and where the time went."""

    portfolio: Portfolio
    levels: list[SparseLevel]
    dense_s: float
    imp_s: float
    surgery_s: float
    path: Path | None
    dense_state: dict[str, torch.Tensor]


def make_portfolio(
    model: SplittableModel,
    train: ImageData,
    test: ImageData | None,
    cfg: IMPConfig,
    dense_epochs: float = 0.0,
    rewind_batches: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
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
    rewind_batches : int
        Rewind point: weights after this many dense batches (0 = initialisation when training here).
    out : str or Path, optional
        Directory to save the portfolio (and ``pareto.png``) to.
    progress : bool
        Show progress bars.
    """
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
        },
    }
    t1 = time.perf_counter()
    levels = iterative_magnitude_pruning(work, rewind, train, cfg, test, progress)
    imp_s = time.perf_counter() - t1
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
    return PipelineResult(portfolio, levels, dense_s, imp_s, surgery_s, path, dense_model.state_dict())
