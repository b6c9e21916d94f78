"""Early-exit heads at partition boundaries, trained with the backbone frozen (BranchyNet-style branches).

An :class:`ExitHead` is rebuilt from nothing but the activation shape it reads, so a node can build it from the
``exit_in_shape`` of a deploy message and load its weights through the codec. Training caches the frozen
backbone's activations at every requested boundary once and fits each head on them with Adam.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from edgeflower.data.datasets import ImageData
from edgeflower.models.splittable import SplittableModel

__all__ = ["ExitHead", "boundary_features", "num_features", "train_exit_heads"]

POOL = 4
"""Feature maps are average-pooled to ``POOL x POOL`` before the linear classifier."""


class ExitHead(nn.Module):
    """A classifier on the activation after block ``boundary - 1``: pool (for maps), flatten, linear.

    Parameters
    ----------
    in_shape : sequence of int
        One sample's activation shape, ``(C, H, W)`` or ``(F,)``.
    num_classes : int
        Classes.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.in_shape = tuple(int(v) for v in in_shape)
        if len(self.in_shape) == 3:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(POOL)
            features = self.in_shape[0] * POOL * POOL
        elif len(self.in_shape) == 1:
            self.pool = nn.Identity()
            features = self.in_shape[0]
        else:
            raise ValueError(f"exit heads read (C, H, W) or (F,) activations, got {self.in_shape}")
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.fc(torch.flatten(self.pool(x), 1))


@torch.no_grad()
def boundary_features(
    model: SplittableModel, x: torch.Tensor, boundaries: Sequence[int], batch_size: int = 500
) -> dict[int, torch.Tensor]:
    """Activations of ``x`` at every boundary (after block ``b - 1``), pooled as the exit heads read them."""
    was_training = model.training
    model.eval()
    out: dict[int, list[torch.Tensor]] = {b: [] for b in boundaries}
    for i in range(0, len(x), batch_size):
        h = x[i : i + batch_size]
        for b, block in enumerate(model.blocks, start=1):
            h = block(h)
            if b in out:
                out[b].append(F.adaptive_avg_pool2d(h, POOL) if h.dim() == 4 else h)
            if b >= max(boundaries):
                break
    model.train(was_training)
    return {b: torch.cat(v) for b, v in out.items()}


def train_exit_heads(
    model: SplittableModel,
    data: ImageData,
    boundaries: Sequence[int],
    epochs: int = 8,
    lr: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[int, ExitHead]:
    """Train one exit head per boundary with the backbone frozen.

    Parameters
    ----------
    model : SplittableModel
        The trained backbone (not modified).
    data : ImageData
        Training samples.
    boundaries : sequence of int
        Split points ``1 .. num_blocks - 1`` after which a head classifies.
    epochs, lr, batch_size, seed : int, float, int, int
        Adam's schedule on the cached features.

    Returns
    -------
    dict of int to ExitHead
        Heads in eval mode.
    """
    bounds = sorted({int(b) for b in boundaries})
    if any(not 0 < b < model.num_blocks for b in bounds):
        raise ValueError(f"exit boundaries must be within 1..{model.num_blocks - 1}, got {bounds}")
    if not bounds:
        return {}
    feats = boundary_features(model, data.x, bounds)
    g = torch.Generator().manual_seed(seed)
    heads: dict[int, ExitHead] = {}
    was_training = model.training
    model.eval()
    shapes: dict[int, tuple[int, ...]] = {}
    with torch.no_grad():
        probe = data.x[:1]
        for i, block in enumerate(model.blocks, start=1):
            probe = block(probe)
            shapes[i] = tuple(probe.shape[1:])
    model.train(was_training)
    for b in bounds:
        torch.manual_seed(seed + b)
        head = ExitHead(shapes[b], model.spec.num_classes)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        fx, y = feats[b], data.y
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), batch_size):
                idx = order[i : i + batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(head.fc(torch.flatten(fx[idx], 1)), y[idx]).backward()
                opt.step()
        heads[b] = head.eval()
    return heads


def num_features(in_shape: Sequence[int]) -> int:
    """Inputs of an exit head's linear layer for activations of ``in_shape``."""
    return in_shape[0] * POOL * POOL if len(in_shape) == 3 else math.prod(in_shape)
