"""Failures are loud, through ``flwr run`` (Simulation Engine): a transient edge failure falls back and is counted,
a permanent one (or any with ``fallback = "never"``) fails the node, and a run whose rounds fail is a failed run.

Three small runs (2 nodes, width 0.25, a few batches) cover the four cases of issue 16: the killed edge server
(fallback counted and logged), an edge server that does not know the model plus a killed one with
``fallback = "never"`` (both nodes fail: the run fails with both messages), and a corrupt data file (``flwrctl``
exits non-zero and prints why).
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from pathlib import Path

from edgeflower.flwrctl import main as flwrctl_main
from edgeflower.flwrctl import run_failures, run_simulation
from edgeflower.process import ListeningProcess
from edgeflower.runlog import run_folder
from edgeflower.transport import EdgeClient
from edgeflower.transport.errors import EdgeError
from tests._edge_helpers import REPO, SECRET
from tests.conftest import ROOT, SIMULATION

SMALL = {
    "mode": "split",
    "model-width": 0.25,
    "split-point": 3,
    "num-rounds": 2,
    "max-batches": 8,
    "batch-size": 32,
    "eval-samples": 500,
    "link-profiles": "0/0/40",  # 40 ms each way: a round on an edge server lasts long enough to kill it mid-round
}

_EDGE_WITHOUT_MODEL = """
import sys
from edgeflower.models import zoo
zoo.MODEL_BUILDERS.pop(sys.argv[1])  # an edge server that does not know the model (another version, another zoo)
from edgeflower.cli import main
sys.exit(main(sys.argv[2:]))
"""


class _Edge(ListeningProcess):
    """``edgeflower edge-server`` on a free port, optionally without one zoo model."""

    def __init__(self, secret_file: Path, without_model: str = "") -> None:
        args = ["edge-server", "--port", "0", "--secret-file", str(secret_file)]
        launcher = [sys.executable, "-c", _EDGE_WITHOUT_MODEL, without_model] if without_model else None
        super().__init__(args, "edge server listening on ", REPO, startup_timeout_s=300, launcher=launcher)


def _kill_when_busy(edge: _Edge, stop: threading.Event) -> threading.Thread:
    """SIGKILL ``edge`` as soon as it holds a session (mid-round), from a thread."""

    def watch() -> None:
        with EdgeClient(edge.address) as client:
            while not stop.is_set():
                try:
                    if client.health(timeout_s=2.0).sessions > 0:
                        edge.sigkill()
                        return
                except EdgeError:
                    return
                time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _run_with_edges(tmp_path: Path, edges: list[_Edge], secret_file: Path, **config: object):
    stop = threading.Event()
    killer = _kill_when_busy(edges[-1], stop)
    try:
        addresses = ",".join(e.address for e in edges)
        run_config = {**SMALL, "edge-addresses": addresses, "edge-secret-file": str(secret_file), **config}
        run_config["run-dir"] = str(tmp_path / "runs")
        return run_simulation(ROOT, tmp_path / "flwr-home", run_config=run_config, timeout=400, **SIMULATION)
    finally:
        stop.set()
        killer.join(5)


def test_edge_server_killed_mid_round_falls_back_counted_and_logged(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    with _Edge(secret_file) as alive, _Edge(secret_file) as doomed:
        outcome = _run_with_edges(tmp_path, [alive, doomed], secret_file)
    print("\n".join(line for line in outcome.logs.splitlines() if "fell-back" in line or "finishing the round" in line))
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    assert f"fell-back 1 of 2 nodes: edge {doomed.address} unreachable" in outcome.logs
    run = run_folder(tmp_path / "runs", outcome.run_id)
    rows = json.loads((run / "metrics.json").read_text())
    assert [row["nodes-fell-back"] for row in rows if "nodes-fell-back" in row] == [1, 1]  # mid-round 1, then dead
    assert all(row.get("nodes-failed", 0) == 0 for row in rows)
    nodes = json.loads((run / "nodes.json").read_text())
    fell = [m for m in nodes["1"].values() if m["fell-back"]]
    assert len(fell) == 1 and fell[0]["fallback-cause"] == "unreachable"
    assert "UNAVAILABLE" in fell[0]["fallback-reason"] or "CANCELLED" in fell[0]["fallback-reason"]


def test_unknown_model_on_the_edge_server_and_a_killed_edge_with_fallback_never_fail_the_run(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    with _Edge(secret_file, without_model="vgg5") as stranger, _Edge(secret_file) as doomed:
        outcome = _run_with_edges(tmp_path, [stranger, doomed], secret_file, fallback="never")
    print("\n".join(run_failures(outcome)))  # what the user sees (pytest -s)
    assert outcome.status == "finished:failed", (outcome.details, outcome.logs[-3000:])
    # the unknown model: the edge server's own message reaches the ServerApp's log
    assert "cannot build model 'vgg5': unknown model 'vgg5'" in outcome.logs, outcome.logs[-3000:]
    # the killed edge server with fallback = "never": the node fails instead of training locally
    assert "fallback = 'never': no local training" in outcome.logs, outcome.logs[-3000:]
    assert "edgeflower: the run failed:" in outcome.logs
    run = run_folder(tmp_path / "runs", outcome.run_id)
    assert (run / "failures.json").is_file()
    assert not (run / "model.pt").exists()  # a failed run leaves no model, never an empty one


def test_corrupt_data_file_fails_the_run_and_flwrctl_exits_non_zero(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    source = Path("/usr/share/datasets/fashion-mnist")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / f"{stem}.gz").symlink_to(source / f"{stem}.gz")
    (data / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 64)[:-9])
    run_config = (
        f'mode="fl" num-rounds=1 max-batches=2 model-width=0.25 eval-samples=200 '
        f'data-root="{data}" run-dir="{tmp_path / "runs"}"'
    )
    home = tmp_path / "flwr-home"
    ray = str(SIMULATION["ray_num_cpus"])
    args = ["--home", str(home), "--ray-cpus", ray, "--timeout", "400", "--run-config", run_config]
    rc = flwrctl_main(["run-sim", str(ROOT), *args])
    out = capsys.readouterr()
    with capsys.disabled():
        print(out.err[-2000:])  # what the user sees (pytest -s)
    assert rc != 0, out.out[-3000:]
    assert "status=finished:failed" in out.out
    assert "train-images-idx3-ubyte.gz" in out.err and "round 1 got no result" in out.err, out.err[-3000:]
