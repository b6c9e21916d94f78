"""Poisson sampling of batches from the operating system's CSPRNG: what amplification by subsampling assumes.

Each step takes every sample of the partition independently with probability ``q = batch-size / N``, so batches
have a random size around ``batch-size``. :class:`~edgeflower.data.BatchLoader`'s shuffled fixed-size batches
would only approximate that analysis; DP runs use this sampler instead, so the reported epsilon is the one the
accountant's assumptions actually hold for.

Amplification by subsampling also assumes the adversary does not know which records were drawn. The masks are
therefore drawn from the operating system's CSPRNG (:func:`os.urandom`), never from the run config's ``seed``
(which anyone who knows the config could replay): two DP runs with the same seed draw different batches. The
``seed`` still fixes everything that is not private (initialisation, partitioning, shuffling in non-DP runs). A
``generator`` can be passed for tests and benchmarks that need reproducible masks; the ClientApp never does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["PoissonBatches", "csprng_mask"]

_MANTISSA = 53
"""Bits of a uniform double in [0, 1) built from 64 random bits (the top 53)."""


def csprng_mask(n: int, sample_rate: float) -> torch.Tensor:
    """A Poisson mask of ``n`` samples at rate ``sample_rate`` from :func:`os.urandom`.

    Each sample is in with probability ``sample_rate``: a uniform value ``k / 2**53`` (``k`` the top 53 bits of 64
    random bits) is compared with ``sample_rate``.
    """
    raw = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(64 - _MANTISSA)
    return torch.from_numpy(raw < np.uint64(int(sample_rate * 2**_MANTISSA)) if sample_rate < 1 else raw >= 0)


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
    generator : torch.Generator, optional
        Draw the masks from this generator (reproducible: tests and benchmarks only). Default: the operating
        system's CSPRNG, so the batches are secret and differ from run to run whatever the run config.

    Attributes
    ----------
    drawn : int
        Draws made so far. An (improbable) empty draw is skipped for training but still counted, and the
        accountant counts every draw, so the accounting never under-counts.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        sample_rate: float,
        steps: int,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if isinstance(generator, int):
            raise TypeError("PoissonBatches takes a torch.Generator (tests only), not a seed")
        self.x, self.y = x, y
        self.sample_rate = sample_rate
        self.steps = steps
        self.generator = generator
        self.drawn = 0

    def __len__(self) -> int:
        return self.steps

    def mask(self) -> torch.Tensor:
        """One draw's mask (boolean, one entry per sample)."""
        n = len(self.y)
        if self.generator is None:
            return csprng_mask(n, self.sample_rate)
        return torch.rand(n, generator=self.generator) < self.sample_rate

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            mask = self.mask()
            self.drawn += 1
            idx = mask.nonzero().flatten()
            if len(idx):
                yield self.x[idx], self.y[idx]
