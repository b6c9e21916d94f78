"""Poisson sampling of batches: what the RDP accountant's privacy amplification by sampling assumes.

Each step takes every sample of the partition independently with probability ``q = batch-size / N``, so batches
have a random size around ``batch-size``. :class:`~edgeflower.data.BatchLoader`'s shuffled fixed-size batches
would only approximate that analysis; DP runs use this sampler instead, so the reported epsilon is the one the
accountant's assumptions actually hold for.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["PoissonBatches"]


class PoissonBatches:
    """``steps`` Poisson-sampled batches of ``(x, y)``.

    Parameters
    ----------
    x, y : torch.Tensor
        The partition's samples and labels.
    sample_rate : float
        Probability that a sample is in a batch (``q``).
    steps : int
        Number of draws.
    seed : int
        Seed of the draws (reproducible batches; the *noise* is seeded separately).

    Attributes
    ----------
    drawn : int
        Draws made so far. An (improbable) empty draw is skipped for training but still counted, and the
        accountant counts every draw, so the accounting never under-counts.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sample_rate: float, steps: int, seed: int) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.x, self.y = x, y
        self.sample_rate = sample_rate
        self.steps = steps
        self.seed = seed
        self.drawn = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        n = len(self.y)
        for _ in range(self.steps):
            mask = torch.rand(n, generator=gen) < self.sample_rate
            self.drawn += 1
            idx = mask.nonzero().flatten()
            if len(idx):
                yield self.x[idx], self.y[idx]
