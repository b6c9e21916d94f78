"""Seeded, reproducible partitioners: IID and Dirichlet(alpha) label skew."""

from __future__ import annotations

import numpy as np

__all__ = ["dirichlet_partition", "iid_partition", "partition"]


def _check(n: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if n < num_partitions:
        raise ValueError(f"cannot split {n} samples into {num_partitions} non-empty partitions")


def iid_partition(n: int, num_partitions: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_partitions`` near-equal parts.

    Returns
    -------
    list of numpy.ndarray
        Sorted, disjoint index arrays whose union is ``range(n)``.
    """
    _check(n, num_partitions)
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, num_partitions)]


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed partition: each class is spread over partitions with proportions ~ Dirichlet(alpha).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label of every sample.
    num_partitions : int
        Number of partitions.
    alpha : float
        Concentration; small values give strong skew, large values approach IID.
    seed : int
        Seed; the same seed gives the same partition.
    min_size : int
        Redraw until every partition has at least this many samples.
    max_tries : int
        Give up (``ValueError``) after this many draws.

    Returns
    -------
    list of numpy.ndarray
        Sorted, disjoint index arrays whose union is ``range(len(labels))``.
    """
    labels = np.asarray(labels)
    _check(len(labels), num_partitions)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].append(chunk)
        out = [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ValueError(
        f"could not give every one of {num_partitions} partitions >= {min_size} samples with alpha={alpha} "
        f"in {max_tries} draws; raise alpha or lower the number of partitions"
    )


def partition(
    labels: np.ndarray, num_partitions: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0
) -> list[np.ndarray]:
    """Dispatch to :func:`iid_partition` (``scheme="iid"``) or :func:`dirichlet_partition` (``"dirichlet"``)."""
    if scheme == "iid":
        return iid_partition(len(labels), num_partitions, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_partitions, alpha, seed)
    raise ValueError(f"unknown partitioner {scheme!r}: expected 'iid' or 'dirichlet'")
