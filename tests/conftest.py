"""Shared test setup: Flower's environment variables and real-data fixtures."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

QUICK = {"num-rounds": 2, "max-batches": 15, "eval-samples": 2000, "lr": 0.05}
"""Run config of the short end-to-end runs: 2 rounds of 15 batches, evaluation on 2000 test samples."""

SIMULATION = {"num_supernodes": 2, "ray_num_cpus": 1}
"""How the end-to-end tests run Flower's Simulation Engine: 2 SuperNodes, served by ONE ClientApp actor (Ray given one
CPU). ``make test`` keeps both cores busy with three pytest workers, so a second actor would add no parallelism, only
a second process importing torch, Flower and the app (about 15 CPU-seconds a run); the nodes then train one after
the other, which no test depends on."""

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_HOME", str(ROOT / ".flwr"))
# One compute thread per process: `make test` runs three pytest workers on two cores, and the servers and Flower runs
# they start are further processes. OpenMP threads that outnumber the cores spin against each other and make torch
# ten times slower or worse; no test depends on intra-op parallelism (benchmarks, not tests, measure speed).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


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
    """One classic-FL ``flwr run`` (Simulation Engine, 2 SuperNodes, :data:`QUICK`), shared by the tests that check
    it and compare with it: ``(outcome, run folder root)``."""
    from edgeflower.flwrctl import run_simulation

    out = tmp_path_factory.mktemp("quick-fl")
    config = {**QUICK, "mode": "fl", "run-dir": str(out)}
    return run_simulation(ROOT, out / "flwr-home", run_config=config, timeout=400, **SIMULATION), out


@pytest.fixture
def flwr_home(tmp_path):
    """A fresh Flower home for one test: runs in parallel (pytest-xdist workers) never share a local SuperLink,
    and :func:`edgeflower.flwrctl.run_simulation` stops only the SuperLink it started for this home."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    return home


# -- running in parallel (pytest-xdist: `make test` runs `-n 3 --dist loadgroup`) ---------------------------------
# Each test module is one group, so its module-scoped fixtures (a trained model, a bundle) are built once, on one
# worker; the tests that share the session's classic-FL run form one group for the same reason. End-to-end tests
# and benchmark quick runs stand alone and are spread one by one. The groups that take
# longest (end-to-end runs through Flower, the shared classic-FL run's group first, then the benchmarks' quick runs)
# are handed out first: `make test` passes `--no-loadscope-reorder`, since by default pytest-xdist hands out the
# groups with the most tests first, which left every single-test Flower run to the end of the suite.
FIRST = ("e2e", "benchmarks", "serving", "edge", "privacy", "pruning")


def _group(item: pytest.Item) -> str:
    if "quick_fl_run" in getattr(item, "fixturenames", ()):
        return "quick-fl-run"
    path = item.nodeid.split("::", 1)[0]
    if path.startswith(("tests/e2e/", "tests/benchmarks/")):
        return item.nodeid  # each run stands alone (its own Flower home, its own subprocess): spread them
    return path


def _order(item: pytest.Item) -> tuple[int, int]:
    parts = item.nodeid.split("/")
    top = parts[1] if len(parts) > 2 else ""
    return (FIRST.index(top) if top in FIRST else len(FIRST), 0 if _group(item) == "quick-fl-run" else 1)


def pytest_configure(config: pytest.Config) -> None:
    """Apply the one-thread rule of the environment above to this process's torch too."""
    import torch

    torch.set_num_threads(1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection loaded (torch, Flower, every test module: a few hundred thousand objects that live for the
    whole run) to the garbage collector's permanent generation. A full collection then scans only what the tests
    create, not those objects again: Python starts one automatically as tests allocate (tensors, modules, messages)
    and every stop of a gRPC server runs one (``transport/grpc_server.py``), 0.3 s each without this. Measured on
    the idle 2-core machine: the whole suite 705 s before, 449 s after (with the Deployment Engine e2e cut to one
    round in the same change, worth about 20 s of it)."""
    gc.collect()
    gc.freeze()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests by module (see above) and put the long groups first; a stable sort keeps each module's order."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(_group(item)))
    items.sort(key=_order)
