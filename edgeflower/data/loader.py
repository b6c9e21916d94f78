"""Fast, seeded mini-batch iteration over in-memory tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from edgeflower.data.datasets import ImageData

__all__ = ["BatchLoader"]


class BatchLoader:
    """Iterate over ``(x, y)`` mini-batches of an :class:`ImageData`.

    The order of epoch ``e`` is a permutation drawn from a generator seeded with ``seed + e``, so two loaders
    with the same seed yield the same batches (the backbone of every equivalence test), and a run can resume
    at any batch index of any epoch.

    Parameters
    ----------
    data : ImageData
        The samples.
    batch_size : int
        Samples per batch.
    shuffle : bool
        Shuffle each epoch.
    seed : int
        Base seed of the shuffling.
    drop_last : bool
        Drop a final incomplete batch.
    max_batches : int, optional
        Stop each epoch after this many batches (for quick runs).
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.epoch = 0

    def order(self, epoch: int) -> torch.Tensor:
        """Sample order of ``epoch``."""
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=g)

    def __len__(self) -> int:
        n = len(self.data)
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return full if self.max_batches is None else min(full, self.max_batches)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``epoch`` from batch index ``start`` on."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.data.x[idx], self.data.y[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)
