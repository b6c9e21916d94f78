"""flwrctl's decisions that need no engine: which failures are retried, and finding a run's folder."""

from __future__ import annotations

import pytest

from edgeflower.flwrctl import SIMULATION_RUNTIME_CRASH, RunOutcome, runtime_crashed
from edgeflower.runlog import run_folder


def test_only_simulation_runtime_crashes_are_retried_not_app_failures():
    crashed = RunOutcome("finished:failed", 7, details=f"Simulation failed with exception: {SIMULATION_RUNTIME_CRASH}")
    ray = RunOutcome("finished:failed", 8, logs="... raylet: wait_for_persisted_port timed out ...")
    app = RunOutcome("finished:failed", 9, details="Simulation failed with exception: bad run config 'split-point'")
    done = RunOutcome("finished:completed", 10, details=SIMULATION_RUNTIME_CRASH)
    assert runtime_crashed(crashed) and runtime_crashed(ray)
    assert not runtime_crashed(app) and not runtime_crashed(done)


def test_run_folder_is_found_by_run_id_beside_a_crashed_attempts_folder(tmp_path):
    (tmp_path / "20261125-101010-run41").mkdir()  # the crashed first attempt
    (tmp_path / "20261125-101110-run4242").mkdir()
    assert run_folder(tmp_path, 4242).name == "20261125-101110-run4242"
    with pytest.raises(FileNotFoundError, match="run 5"):
        run_folder(tmp_path, 5)
    with pytest.raises(FileNotFoundError):
        run_folder(tmp_path, None)
