"""The user's own model and data: quickstart-pytorch's CNN and a Fashion-MNIST loader for the local IDX files.

Nothing here knows about edgeflower.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz'), for 1x28x28 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(
    data_dir: str, partition_id: int, num_partitions: int, train: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's IID share of Fashion-MNIST (images normalised to [-1, 1]) from the local IDX files."""
    prefix = "train" if train else "t10k"
    x = _idx(Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz")
    y = _idx(Path(data_dir) / f"{prefix}-labels-idx1-ubyte.gz")
    order = np.random.default_rng(42).permutation(len(y))
    part = np.array_split(order, num_partitions)[partition_id]
    images = torch.from_numpy(x[part].astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return images, torch.from_numpy(y[part].astype(np.int64))


def test(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy of ``net`` on ``(x, y)``."""
    net.eval()
    with torch.no_grad():
        logits = net(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
