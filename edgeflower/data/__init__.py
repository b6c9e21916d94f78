"""Datasets (real image data from a local root) and partitioners."""

from edgeflower.data.datasets import DATASETS, DataError, ImageData, load_dataset, read_idx
from edgeflower.data.loader import BatchLoader
from edgeflower.data.partition import dirichlet_partition, iid_partition, partition

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataError",
    "ImageData",
    "dirichlet_partition",
    "iid_partition",
    "load_dataset",
    "partition",
    "read_idx",
]
