"""Failout training (ResiliNet-style): teach a residual model to survive skipped blocks.

During training every shape-preserving block in ``blocks`` is dropped with probability ``p`` for the whole batch
(stochastic depth without rescaling), so at serving time the controller can route around a failed node that held
such blocks with a small accuracy loss (the *skip* technique).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from edgeflower.models.splittable import SplittableModel
from edgeflower.serving.estimators import out_shapes
from edgeflower.serving.plan import skippable
from edgeflower.training import TrainResult

__all__ = ["failout_train", "skippable_blocks"]


def skippable_blocks(model: SplittableModel) -> list[int]:
    """Blocks whose output shape equals their input shape (all but the last)."""
    shapes = out_shapes(model)
    return [i for i in range(model.num_blocks) if skippable(shapes, model.spec.in_shape, i, i + 1)]


def failout_train(
    model: SplittableModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    blocks: Sequence[int] | None = None,
    p: float = 0.2,
    seed: int = 0,
) -> TrainResult:
    """Train ``model`` with cross-entropy, dropping each of ``blocks`` (default: every skippable one) with ``p``.

    Returns
    -------
    TrainResult
        Samples, mean loss and seconds.
    """
    drop = set(skippable_blocks(model) if blocks is None else blocks)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"failout probability must be in [0, 1), got {p}")
    g = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, n, t0 = 0.0, 0, time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        h = x
        for i, block in enumerate(model.blocks):
            if i in drop and float(torch.rand((), generator=g)) < p:
                continue
            h = block(h)
        loss = loss_fn(h, y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        n += len(y)
    return TrainResult(n, total / max(n, 1), time.perf_counter() - t0)
