"""Iterative magnitude pruning with weight rewinding (lottery-ticket style), run centrally on a trained model.

Level ``i`` prunes the conv weights (and optionally linear weights) globally by magnitude down to
``1 / compressions[i]`` of them, rewinds every weight to the early checkpoint taken after ``rewind_batches``
batches of dense training, re-applies the masks and retrains; the next level prunes the retrained weights.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import INFO

import torch
from flwr.common.logger import log
from torch import nn
from tqdm.auto import tqdm

from edgeflower.data import BatchLoader, ImageData
from edgeflower.pruning.magnitude import (
    apply_masks,
    compression_of,
    enforce_masks,
    global_magnitude_masks,
    prunable_tensors,
)
from edgeflower.training import evaluate, make_optimizer, train_local

__all__ = [
    "DEFAULT_COMPRESSIONS",
    "IMPConfig",
    "SparseLevel",
    "geometric_compressions",
    "iterative_magnitude_pruning",
    "train_dense",
]

DEFAULT_COMPRESSIONS = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
"""DNNShifter's portfolio: 2x ... 256x compression of the prunable weights."""


def geometric_compressions(max_compression: float = 256.0, levels_per_doubling: int = 1) -> tuple[float, ...]:
    """IMP targets that prune the same share of the remaining weights at every level, ``levels_per_doubling``
    levels per halving of the weights, up to ``max_compression``; every power of two is hit exactly.

    ``levels_per_doubling=3`` prunes 20.6 % of the remaining weights per level (DNNShifter: 20 %, ``1.25 ** k``)
    and reaches 256x in 24 levels while keeping the portfolio levels 2x, 4x ... 256x.

    Parameters
    ----------
    max_compression : float
        The last target; must be a power of two >= 2.
    levels_per_doubling : int
        Levels per halving of the remaining weights (>= 1).

    Returns
    -------
    tuple of float
        ``2 ** (k / levels_per_doubling)`` for ``k = 1 ... levels_per_doubling * log2(max_compression)``.
    """
    doublings = math.log2(max_compression) if max_compression > 0 else float("nan")
    if not doublings >= 1 or doublings != round(doublings):
        raise ValueError(f"max_compression must be a power of two >= 2, got {max_compression}")
    if levels_per_doubling < 1:
        raise ValueError(f"levels_per_doubling must be >= 1, got {levels_per_doubling}")
    n = levels_per_doubling
    return tuple(float(2 ** (k // n)) if k % n == 0 else 2.0 ** (k / n) for k in range(1, n * round(doublings) + 1))


StateDict = dict[str, torch.Tensor]


@dataclass
class IMPConfig:
    """Schedule of iterative magnitude pruning.

    Attributes
    ----------
    compressions : sequence of float
        Target compression (prunable weights / remaining weights) after each level, increasing.
        DNNShifter prunes 20 % of the remaining weights per level (``1.25 ** k``); the default halves them;
        :func:`geometric_compressions` gives DNNShifter-like schedules that still hit 2x, 4x ... exactly.
    retrain_epochs : float
        Epochs of retraining per level (fractions allowed).
    batch_size, lr, momentum, weight_decay : int, float
        SGD settings of retraining.
    max_batches : int, optional
        Cap on batches per epoch.
    include_linear : bool
        Prune linear weights too (DNNShifter excludes them).
    seed : int
        Shuffling seed.
    """

    compressions: Sequence[float] = DEFAULT_COMPRESSIONS
    retrain_epochs: float = 1.0
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_batches: int | None = None
    include_linear: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        cs = [float(c) for c in self.compressions]
        if not cs or any(c <= 1.0 for c in cs) or any(b <= a for a, b in itertools.pairwise(cs)):
            raise ValueError(f"compressions must be increasing and > 1, got {cs}")


@dataclass
class SparseLevel:
    """One IMP level: the sparse model's state (with BatchNorm) and how it did.

    Attributes
    ----------
    target : float
        Target compression of the level.
    compression : float
        Measured compression of the prunable weights.
    state_dict : dict
        The retrained sparse model's weights (zeros where pruned).
    masks : dict
        Boolean masks of the prunable weights.
    accuracy : float
        Test accuracy (NaN without test data).
    seconds : float
        Time spent on the level (pruning, rewinding, retraining).
    """

    target: float
    compression: float
    state_dict: StateDict
    masks: StateDict
    accuracy: float = float("nan")
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)


def _batches(data: ImageData, batch_size: int, epochs: float, seed: int, max_batches: int | None):  # type: ignore[no-untyped-def]
    loader = BatchLoader(data, batch_size, shuffle=True, seed=seed, max_batches=max_batches)
    total = max(1, round(epochs * len(loader)))
    done, epoch = 0, 0
    while done < total:
        for batch in loader.batches(epoch):
            if done >= total:
                return
            yield batch
            done += 1
        epoch += 1


def train_dense(
    model: nn.Module,
    data: ImageData,
    epochs: float,
    cfg: IMPConfig,
    rewind_batches: int | None = 100,
    progress: bool = True,
) -> StateDict:
    """Train ``model`` densely in place and return its weights after ``rewind_batches`` batches (the rewind point).

    ``rewind_batches = 0`` rewinds to the initialisation (the original lottery-ticket procedure); ``None`` (or
    more batches than dense training has) to the end of dense training, the trained weights ("late rewinding").
    """
    if rewind_batches is None:
        rewind_batches = 1 << 62
    rewind = copy.deepcopy(model.state_dict()) if rewind_batches <= 0 else None
    opt = make_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    batches = list(_batches(data, cfg.batch_size, epochs, cfg.seed, cfg.max_batches))
    for i, batch in enumerate(tqdm(batches, desc="dense training", disable=not progress, leave=False)):
        train_local(model, [batch], opt)
        if rewind is None and i + 1 >= rewind_batches:
            rewind = copy.deepcopy(model.state_dict())
    return rewind if rewind is not None else copy.deepcopy(model.state_dict())


def iterative_magnitude_pruning(
    model: nn.Module,
    rewind_state: StateDict,
    train: ImageData,
    cfg: IMPConfig,
    test: ImageData | None = None,
    progress: bool = True,
    on_level: Callable[[SparseLevel], None] | None = None,
) -> list[SparseLevel]:
    """Run IMP with rewinding on a trained model.

    Parameters
    ----------
    model : nn.Module
        The trained dense model; it is modified (it ends as the last level's sparse model).
    rewind_state : dict
        Weights to rewind to before retraining each level (see :func:`train_dense`).
    train : ImageData
        Retraining data.
    cfg : IMPConfig
        The schedule.
    test : ImageData, optional
        Data to measure each level's accuracy on.
    progress : bool
        Show a progress bar over levels.
    on_level : callable, optional
        Called with each finished level.

    Returns
    -------
    list of SparseLevel
        One per target compression, in order.
    """
    masks: StateDict | None = None
    levels: list[SparseLevel] = []
    bar = tqdm(cfg.compressions, desc="IMP levels", disable=not progress)
    for i, target in enumerate(bar):
        t0 = time.perf_counter()
        weights = prunable_tensors(model, cfg.include_linear)
        masks = global_magnitude_masks(weights, 1.0 - 1.0 / float(target), masks)
        model.load_state_dict(rewind_state)
        apply_masks(model, masks)
        opt = make_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        handle = enforce_masks(opt, model, masks)
        try:
            batches = _batches(train, cfg.batch_size, cfg.retrain_epochs, cfg.seed + 1000 * (i + 1), cfg.max_batches)
            result = train_local(model, batches, opt)
        finally:
            handle.remove()
        level = SparseLevel(
            target=float(target),
            compression=compression_of(prunable_tensors(model, cfg.include_linear)),
            state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
            masks={k: v.clone() for k, v in masks.items()},
            history=[result.loss],
        )
        if test is not None:
            level.accuracy = evaluate(model, test)[1]
        level.seconds = time.perf_counter() - t0
        levels.append(level)
        bar.set_postfix(compression=f"{level.compression:.1f}x", acc=f"{level.accuracy:.3f}")
        log(
            INFO,
            "IMP level %d: %.1fx compression, accuracy %.4f, %.1f s",
            i + 1,
            level.compression,
            level.accuracy,
            level.seconds,
        )
        if on_level is not None:
            on_level(level)
    return levels
