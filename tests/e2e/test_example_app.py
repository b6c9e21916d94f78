"""The example app (examples/quickstart-edgeflower: a quickstart-pytorch app with its own model and data loading)
through `flwr run`: FedProx wrapped by EdgeStrategy, split offloading of the user's model to an in-process edge
server (node 1) and to an external `edgeflower edge-server --model ...` process (node 2), DP on the device part,
and a pruned portfolio of the result."""

from __future__ import annotations

import json
import secrets

import pytest

from edgeflower.flwrctl import run_simulation
from edgeflower.process import ListeningProcess
from tests.conftest import ROOT, SIMULATION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # ~90 s alone; minutes on a loaded 2-core machine

APP = ROOT / "examples" / "quickstart-edgeflower"
MODEL = "quickstart_edgeflower.task:Net"


def test_example_app_runs_through_flwr_run_with_in_process_and_external_edge_servers(tmp_path, flwr_home):
    secret = tmp_path / "edge.secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    edge = ListeningProcess(
        ["edge-server", "--port", "0", "--secret-file", str(secret), "--edge-id", "external", "--model", MODEL],
        "edge server listening on ",
        cwd=APP,  # the user's package is importable there; no code comes over the network
        startup_timeout_s=600.0,  # a loaded CI machine can take minutes to import torch
    )
    try:
        config = {
            "num-server-rounds": 1,
            "max-batches": 3,
            "edge-address": edge.address,
            "edge-secret-file": str(secret),
            "dp-noise-multiplier": 1.0,
            "portfolio-dir": str(tmp_path / "portfolio"),
        }
        outcome = run_simulation(APP, flwr_home, run_config=config, timeout=600, **SIMULATION)
    finally:
        edge.terminate()
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    logs = outcome.logs
    assert "global model: test loss" in logs
    assert "'fell-back': 0.0" in logs  # both nodes trained with their edge server (in-process and external)
    assert "(quickstart_edgeflower.task:Net, k=4)" in logs  # the in-process edge server built the user's model
    assert "'dp-epsilon': " in logs and "portfolio variant x4" in logs
    manifest = json.loads((tmp_path / "portfolio" / "portfolio.json").read_text())
    assert len(manifest["variants"]) >= 2
