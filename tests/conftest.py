"""Shared test setup: Flower's environment variables and real-data fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_HOME", str(ROOT / ".flwr"))


@pytest.fixture(scope="session")
def fmnist_train():
    """Real Fashion-MNIST training split (Debian's dataset-fashion-mnist package)."""
    from edgeflower.data import load_dataset

    return load_dataset("fashion-mnist", train=True)


@pytest.fixture(scope="session")
def fmnist_test():
    """Real Fashion-MNIST test split."""
    from edgeflower.data import load_dataset

    return load_dataset("fashion-mnist", train=False)
