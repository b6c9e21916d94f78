"""flwrctl's decisions that need no engine: which failures are retried, and finding a run's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeflower.flwrctl import SIMULATION_RUNTIME_CRASH, RunOutcome, runtime_crash_cause, runtime_crashed
from edgeflower.runlog import run_folder


def test_only_ray_failing_to_start_is_retried_not_app_failures_nor_unexplained_crashes():
    ray_log = (
        "ERROR : An exception occured!! The current node timed out during startup. This could happen because some"
        " of the raylet failed to startup or the GCS has become overloaded.\n"
    )
    details = f"Simulation failed with exception: {SIMULATION_RUNTIME_CRASH}"
    raylet = RunOutcome("finished:failed", 7, details=details, logs=ray_log)
    worker = RunOutcome("finished:failed", 8, logs="... raylet: wait_for_persisted_port timed out ...")
    unexplained = RunOutcome("finished:failed", 6, details=details, logs="ERROR : Simulation Runtime crashed.")
    app = RunOutcome("finished:failed", 9, details="Simulation failed with exception: bad run config 'split-point'")
    done = RunOutcome("finished:completed", 10, details=SIMULATION_RUNTIME_CRASH, logs=ray_log)
    assert runtime_crashed(raylet) and runtime_crashed(worker)
    assert runtime_crash_cause(raylet).startswith("The current node timed out during startup. This could happen")
    assert not runtime_crashed(unexplained) and not runtime_crashed(app) and not runtime_crashed(done)


def test_run_folder_is_found_by_run_id_beside_a_crashed_attempts_folder(tmp_path):
    (tmp_path / "20261125-101010-run41").mkdir()  # the crashed first attempt
    (tmp_path / "20261125-101110-run4242").mkdir()
    assert run_folder(tmp_path, 4242).name == "20261125-101110-run4242"
    with pytest.raises(FileNotFoundError, match="run 5"):
        run_folder(tmp_path, 5)
    with pytest.raises(FileNotFoundError):
        run_folder(tmp_path, None)


def test_unknown_run_config_keys_are_named_before_flower_is_asked(tmp_path):
    from edgeflower.flwrctl import run_simulation, unknown_run_config_keys
    from tests.conftest import ROOT

    assert unknown_run_config_keys(ROOT, {"lr": 0.1, "mode": "split"}) == ""
    message = unknown_run_config_keys(ROOT, {"split-piont": 3, "lr": 0.1})
    assert "unknown run-config key 'split-piont' (did you mean 'split-point'?)" in message
    outcome = run_simulation(ROOT, tmp_path / "home", run_config={"num-round": 2})  # refused without starting Flower
    assert outcome.status == "not-started" and "'num-round' (did you mean 'num-rounds'?)" in outcome.details


def test_a_failed_runs_reasons_are_its_details_and_the_serverapps_failure_lines():
    from edgeflower.flwrctl import run_failures

    logs = (
        "INFO : round 1: 2 replies\nERROR : round 2: 2 of 2 nodes failed: node 1: cannot read train-images\n"
        "ERROR : edgeflower: the run failed: round 2 got no result: 2 of 2 nodes failed: node 1: ...\n"
    )
    lines = run_failures(RunOutcome("finished:failed", 5, logs=logs, details="ServerApp raised"))
    assert lines[0] == "run 5 finished:failed: ServerApp raised"
    assert len(lines) == 3 and "cannot read train-images" in lines[1] and "the run failed" in lines[2]


def test_a_retry_after_ray_failed_to_start_is_counted_in_the_final_runs_folder(tmp_path):
    import json

    from edgeflower.flwrctl.simulation import record_retries

    (tmp_path / "20261201-101010-run77").mkdir()
    crash = {"run-id": 76, "status": "finished:failed", "cause": "The current node timed out during startup."}
    record_retries({"run-dir": str(tmp_path)}, RunOutcome("finished:completed", 77), [crash])
    counted = json.loads((tmp_path / "20261201-101010-run77" / "runtime-retries.json").read_text())
    assert counted == {"retries": 1, "attempts": [crash]}


def test_the_fab_built_in_process_equals_the_fab_flwr_run_builds(tmp_path):
    """The FAB is built from the files Flower would package, without entering the directories Flower drops whole
    (``.venv``, ``.flwr``, ``__pycache__``, .gitignore'd ones); the bytes are those of ``flwr run``'s own build."""
    from flwr.cli.build import build_fab_from_disk

    from edgeflower.flwrctl.control import app_files, build_app_fab

    app = tmp_path / "app"
    (app / "pkg" / "__pycache__").mkdir(parents=True)
    (app / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "1.0.0"\n\n[tool.flwr.app]\npublisher = "me"\n\n'
        '[tool.flwr.app.components]\nserverapp = "pkg.s:app"\nclientapp = "pkg.c:app"\n\n[tool.flwr.app.config]\n'
    )
    (app / ".gitignore").write_text("runs/\n*.log\n")
    for name in ("pkg/__init__.py", "pkg/s.py", "pkg/c.py", "README.md", "data.json", "pkg/__pycache__/s.cpython.pyc"):
        (app / name).write_text("x = 1\n")
    for ignored in (".venv/lib/site.py", ".flwr/config.toml", "runs/r1/metrics.json", "deep/run.log", "image.png"):
        (app / ignored).parent.mkdir(parents=True, exist_ok=True)
        (app / ignored).write_text("ignored\n")
    listed = set(app_files(app))
    assert not any(p.startswith((".venv/", ".flwr/", "runs/")) or "__pycache__" in p for p in listed), listed
    fab, _ = build_app_fab(app)
    assert fab.content == build_fab_from_disk(app)


@pytest.mark.parametrize(
    ("cmdlines", "level"),
    [((b"ray::ClientAppActor.run", b"ray::IDLE"), "INFO"), ((b"ray::X", b"flwr-serverapp"), "WARNING")],
)
def test_leftover_ray_workers_are_stopped_in_one_info_line_and_others_warn(monkeypatch, caplog, cmdlines, level):
    import logging

    from edgeflower.flwrctl import processes

    cmd = dict(zip((11, 12), cmdlines, strict=True))
    stopped: list[int] = []
    monkeypatch.setattr(processes, "find_local_superlinks", lambda home: [])
    monkeypatch.setattr(processes, "stray_processes", lambda home: [11, 12])
    monkeypatch.setattr(processes, "alive", lambda pid: True)
    monkeypatch.setattr(processes, "_read_proc", lambda pid, name: cmd[pid] + b"\0")
    monkeypatch.setattr(processes, "kill_process_tree", lambda pid, **kw: stopped.append(pid))
    logger = logging.getLogger("flwr")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert processes.stop_local_superlink(Path("/nonexistent")) == [11, 12]
    assert stopped == [11, 12]
    lines = [r for r in caplog.records if "flwrctl: stopping 2" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == level and "pid 11, 12" in lines[0].getMessage()
