"""Datasets and partitioners: real data loads, partitions are disjoint, complete and reproducible."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from edgeflower.data import (
    BatchLoader,
    DataError,
    dirichlet_partition,
    iid_partition,
    load_dataset,
    partition,
    read_idx,
)


def test_fashion_mnist_from_debian_package_is_complete_and_normalised(fmnist_train, fmnist_test):
    assert fmnist_train.x.shape == (60000, 1, 28, 28) and fmnist_test.x.shape == (10000, 1, 28, 28)
    assert fmnist_train.x.dtype == torch.float32 and fmnist_train.y.dtype == torch.int64
    assert abs(float(fmnist_train.x.mean())) < 0.01 and abs(float(fmnist_train.x.std()) - 1) < 0.01
    assert torch.bincount(fmnist_train.y).tolist() == [6000] * 10
    assert torch.bincount(fmnist_test.y).tolist() == [1000] * 10


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("num", [1, 4, 7])
def test_partitions_are_disjoint_complete_and_reproducible(fmnist_train, scheme, num):
    labels = fmnist_train.y.numpy()
    parts = partition(labels, num, scheme, alpha=0.5, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)  # disjoint and complete
    again = partition(labels, num, scheme, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(labels, num, scheme, alpha=0.5, seed=4)
    assert num == 1 or not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_skews_labels_and_iid_does_not(fmnist_train):
    labels = fmnist_train.y.numpy()

    def skew(parts):
        shares = np.stack([np.bincount(labels[p], minlength=10) / len(p) for p in parts])
        return float(np.abs(shares - 0.1).sum(axis=1).mean())

    assert skew(iid_partition(len(labels), 5, seed=0)) < 0.05
    assert skew(dirichlet_partition(labels, 5, alpha=0.1, seed=0)) > 0.8


def test_partitioner_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(np.zeros(10, dtype=int), 2, alpha=0)
    with pytest.raises(ValueError, match="partitions"):
        iid_partition(3, 5)
    with pytest.raises(ValueError, match="unknown partitioner"):
        partition(np.zeros(10, dtype=int), 2, "pathological")


def test_batch_loader_is_seeded_and_resumable(fmnist_test):
    a = BatchLoader(fmnist_test, 32, seed=7, max_batches=5)
    b = BatchLoader(fmnist_test, 32, seed=7, max_batches=5)
    first = list(a.batches(0))
    assert len(first) == 5
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, b.batches(0), strict=True))
    resumed = list(b.batches(0, start=3))
    assert torch.equal(resumed[0][0], first[3][0])
    assert not torch.equal(next(iter(a.batches(1)))[0], first[0][0])


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path, cache=False)


def test_missing_cifar_says_data_is_never_downloaded(tmp_path):
    with pytest.raises(DataError, match="never downloads"):
        load_dataset("cifar10", root=tmp_path, cache=False)


def _write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_idx_reader_reads_a_valid_file_and_rejects_corrupt_ones(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte.gz"
    _write_idx(good, arr)
    assert np.array_equal(read_idx(good), arr)
    truncated = tmp_path / "trunc.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:-5]))
    with pytest.raises(DataError, match="corrupt"):
        read_idx(truncated)
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(garbage)


def test_corrupt_dataset_directory_fails_with_clear_error(tmp_path):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="do not match"):
        load_dataset("fashion-mnist", root=tmp_path, cache=False)


def test_small_fashion_mnist_copy_in_another_root_loads(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    data = load_dataset("fashion-mnist", root=tmp_path, cache=False)
    assert len(data) == 6 and data.in_shape == (1, 28, 28) and data.y.tolist() == list(range(6))
