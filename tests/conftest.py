"""Shared test setup: Flower's environment variables and real-data fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

QUICK = {"num-rounds": 2, "max-batches": 15, "eval-samples": 2000, "lr": 0.05}
"""Run config of the short end-to-end runs: 2 rounds of 15 batches, evaluation on 2000 test samples."""

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


@pytest.fixture(scope="session")
def quick_fl_run(tmp_path_factory):
    """One classic-FL ``flwr run`` (Simulation Engine, 4 SuperNodes, :data:`QUICK`), shared by the tests that check
    it and compare with it: ``(outcome, run folder root)``."""
    from edgeflower.flwrctl import run_simulation

    out = tmp_path_factory.mktemp("quick-fl")
    config = {**QUICK, "mode": "fl", "run-dir": str(out)}
    return run_simulation(ROOT, ROOT / ".flwr", num_supernodes=4, run_config=config, timeout=400), out
