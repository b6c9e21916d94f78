"""End-to-end: the app through `flwr run .` (Simulation Engine); the Deployment Engine runs are in
test_split_engines.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeflower.flwrctl import RunOutcome, run_simulation
from edgeflower.flwrctl import main as flwrctl_main
from edgeflower.runlog import run_folder
from tests.conftest import ROOT

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
    assert rows[-1]["nodes"] == 2 and rows[-1]["round-time-s"] > 0
    assert "round 2/2: test accuracy" in outcome.logs


def test_bad_run_config_is_refused_before_flower_starts_with_the_key_named(tmp_path, capsys):
    """A wrong value is named at once, by flwrctl (``make run``) and ``run_simulation``, before a SuperLink, the
    Simulation Runtime and Ray start; the ServerApp would fail the run with the same message (its validation is
    unit-tested in tests/test_config.py; a ServerApp failure failing the run is tests/e2e/test_failures.py)."""
    home = tmp_path / "flwr-home"
    outcome = run_simulation(ROOT, home, num_supernodes=2, run_config={"split-point": 99}, timeout=300)
    assert outcome.status == "not-started" and outcome.run_id is None
    assert "'split-point': 99 is out of range for vgg5" in outcome.details
    assert not (home / "local-superlink" / "superlink.log").exists()  # no SuperLink was started
    rc = flwrctl_main(["run-sim", str(ROOT), "--home", str(home), "--run-config", "split-point=99"])
    assert rc == 1 and "'split-point': 99 is out of range" in capsys.readouterr().out
