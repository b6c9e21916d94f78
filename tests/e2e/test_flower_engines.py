"""End-to-end: the app through `flwr run .` (Simulation Engine) and on a real Deployment Engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeflower.flwrctl import Deployment, RunOutcome, run_simulation
from edgeflower.runlog import run_folder
from tests.conftest import QUICK, ROOT

pytestmark = pytest.mark.slow


def _run_rows(run_root: Path, outcome: RunOutcome) -> list[dict]:
    run = run_folder(run_root, outcome.run_id)  # a run retried after a Simulation Runtime crash has a new ID
    for name in ("config.json", "metrics.json", "metrics.csv", "nodes.json", "model.pt", "run.png"):
        assert (run / name).is_file(), name
    return json.loads((run / "metrics.json").read_text())


def test_flwr_run_simulation_completes_and_learns_well_above_chance(quick_fl_run):
    outcome, run_root = quick_fl_run
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    rows = _run_rows(run_root, outcome)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["test-accuracy"] < 0.2
    assert rows[-1]["test-accuracy"] > 0.6  # chance is 0.1
    assert rows[-1]["nodes"] == 4 and rows[-1]["round-time-s"] > 0
    assert "round 2/2: test accuracy" in outcome.logs


def test_bad_run_config_fails_the_run_with_the_key_named(tmp_path):
    config = {"split-point": 99, "run-dir": str(tmp_path)}
    outcome = run_simulation(ROOT, tmp_path / "flwr-home", num_supernodes=2, run_config=config, timeout=300)
    assert outcome.status == "finished:failed"
    assert "split-point" in outcome.details + outcome.logs


def test_deployment_engine_runs_the_app_on_superlink_and_two_supernodes(tmp_path):
    # with Flower's client-side central DP composed in (the ClientApp's mod clips, the wrapper adds noise); the
    # clipping norm and noise are too loose to change what is learnt
    central = {"central-dp": "client-fixed", "central-dp-clipping-norm": 1e4, "central-dp-noise-multiplier": 1e-9}
    with Deployment(tmp_path / "flwr-home", num_supernodes=2) as deployment:
        outcome = deployment.run(ROOT, {**QUICK, **central, "run-dir": str(tmp_path)}, timeout=400)
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    assert "DifferentialPrivacyClientSideFixedClipping" in outcome.logs or "clipping" in outcome.logs.lower()
    rows = _run_rows(tmp_path, outcome)
    assert rows[-1]["nodes"] == 2 and rows[-1]["test-accuracy"] > 0.5
