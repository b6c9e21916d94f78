"""Split mode end to end: Flower's Simulation Engine with in-process edge servers, and the Deployment Engine
with edge servers as separate processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeflower.flwrctl import Deployment, RunOutcome, run_simulation
from edgeflower.runlog import run_folder
from tests._edge_helpers import EdgeProcess, self_signed_cert
from tests.conftest import QUICK, ROOT, SIMULATION

pytestmark = pytest.mark.slow


def _run(run_root: Path, outcome: RunOutcome) -> tuple[list[dict], dict]:
    run = run_folder(run_root, outcome.run_id)  # a run retried after a Simulation Runtime crash has a new ID
    return json.loads((run / "metrics.json").read_text()), json.loads((run / "nodes.json").read_text())


def test_split_training_with_a_mid_round_move_through_flower_equals_classic_fl(tmp_path, quick_fl_run):
    """Split training on two in-process edge servers, with the first node moving to the other edge server halfway
    through round 2 (FedFly migration), through Flower's Simulation Engine: the same computation as classic FL on the
    same batches, so the final global model equals the classic-FL run's (shared with test_flower_engines). Split
    training alone and migration alone are proven equal to local training in tests/clients and tests/server; one
    run here covers both through Flower (measured on this machine: the three models are bit-identical)."""
    fl_outcome, fl_root = quick_fl_run  # the same config in classic FL
    assert fl_outcome.status == "finished:completed", (fl_outcome.details, fl_outcome.logs[-3000:])
    fl_rows = _run(fl_root, fl_outcome)[0]
    out = tmp_path / "moved"
    config = {**QUICK, "mode": "split", "split-point": 3, "edge-servers": 2, "mobility": "0@2:0.5->1"}
    outcome = run_simulation(
        ROOT, tmp_path / "flwr-home", run_config={**config, "run-dir": str(out)}, timeout=500, **SIMULATION
    )
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    rows, nodes = _run(out, outcome)
    run = run_folder(out, outcome.run_id)
    first = nodes["1"]  # round 1: no move yet, one node per edge server
    assert len(first) == 2 and len({m["edge-address"] for m in first.values()}) == 2  # both edge servers served
    assert all(m["split-point"] == 3 for m in first.values())
    last = nodes[str(QUICK["num-rounds"])]
    assert sorted(m["moved-to-edge"] for m in last.values()) == [-1, 1]  # node 0 moved to edge server 1
    assert all(m["fell-back"] == 0 for rnd in nodes.values() for m in rnd.values())  # nothing trained locally
    assert (run / "timelines" / "round-1.json").is_file() and (run / "gantt-round-1.png").is_file()
    fl_model = torch.load(run_folder(fl_root, fl_outcome.run_id) / "model.pt", weights_only=True)
    moved_model = torch.load(run / "model.pt", weights_only=True)
    assert max((fl_model[k].double() - moved_model[k].double()).abs().max().item() for k in fl_model) <= 1e-5
    assert fl_rows[-1]["test-accuracy"] > 0.6
    # equal weights up to float rounding, evaluated on the same 2000 test samples: only samples on a decision
    # boundary could change, so 2 points (40 samples) is a margin no rounding explains
    assert abs(rows[-1]["test-accuracy"] - fl_rows[-1]["test-accuracy"]) < 0.02


def test_deployment_engine_runs_split_training_on_edge_server_processes_over_tls_with_central_dp(tmp_path):
    """The Deployment Engine (a SuperLink and two SuperNodes, each a process) runs split training with two edge
    server processes over TLS, with Flower's client-side central DP composed in (the ClientApp's clipping mod, the
    server's noise wrapper; clipping norm and noise too loose to change what is learnt)."""
    secret = tmp_path / "edge-secret"
    secret.write_bytes(b"deployment-engine-edge-secret-0123456789")
    cert, key = self_signed_cert()
    (tmp_path / "edge.pem").write_bytes(cert)
    (tmp_path / "edge.key").write_bytes(key)
    tls = ("--tls-cert", str(tmp_path / "edge.pem"), "--tls-key", str(tmp_path / "edge.key"))
    central = {"central-dp": "client-fixed", "central-dp-clipping-norm": 1e4, "central-dp-noise-multiplier": 1e-9}
    with (
        EdgeProcess(secret, *tls) as e1,
        EdgeProcess(secret, *tls) as e2,
        Deployment(tmp_path / "flwr-home", 2) as deployment,
    ):
        config = {
            **QUICK,
            **central,
            "num-rounds": 1,  # one round shows it all (each round starts a ClientApp process per SuperNode)
            "mode": "split",
            "edge-addresses": f"{e1.address},{e2.address}",
            "edge-secret-file": str(secret),
            "edge-root-cert": str(tmp_path / "edge.pem"),  # the nodes trust the edge servers' certificate
            "run-dir": str(tmp_path / "runs"),
        }
        outcome = deployment.run(ROOT, config, timeout=500)
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    assert "DifferentialPrivacyClientSideFixedClipping" in outcome.logs or "clipping" in outcome.logs.lower()
    rows, nodes = _run(tmp_path / "runs", outcome)
    for name in ("config.json", "metrics.json", "metrics.csv", "nodes.json", "model.pt", "run.png"):
        assert (run_folder(tmp_path / "runs", outcome.run_id) / name).is_file(), name
    assert rows[-1]["nodes"] == 2 and rows[-1]["test-accuracy"] > 0.5
    assert [r["round"] for r in rows] == [0, 1]
    last = nodes["1"]
    assert {m["edge-address"] for m in last.values()} == {e1.address, e2.address}
    assert all(m["fell-back"] == 0 for m in last.values())  # every session ran over TLS on its edge server


def test_pipeline_mode_selects_plans_per_node_and_reports_predicted_vs_measured(tmp_path):
    config = {
        **QUICK,
        "num-rounds": 2,
        "mode": "pipeline",
        "norm": "group",
        "link-profiles": "40/40/2,10/10/5",
        "device-profiles": "2,2",
        "run-dir": str(tmp_path),
    }
    outcome = run_simulation(ROOT, tmp_path / "flwr-home", run_config=config, timeout=500, **SIMULATION)
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    rows, nodes = _run(tmp_path, outcome)
    assert rows[-1]["test-accuracy"] > 0.5
    for metrics in nodes["2"].values():
        assert metrics["predicted-iter-s"] > 0 and metrics["measured-iter-s"] > 0
        assert metrics["fell-back"] == 0 if metrics["split-point"] < 7 else True


def test_fedadapt_planner_applies_the_policy_per_group_after_a_measuring_round(tmp_path):
    """The ServerApp loads a policy file and, once round 1 has measured every node, applies the policy's action
    to each group. The policy here always answers cut 4 (an actor whose last layer is zero but for the bias of
    cut 4 in every group), so every node must get split point 4 (the exact planner takes the same path through
    ``make_planner``; its choices are unit-tested)."""
    from edgeflower.planning import ActorCritic, save_policy
    from edgeflower.planning.state import STATE_FEATURES

    expected = 4
    net = ActorCritic(STATE_FEATURES * 2, 2, 8)  # two groups, one of the 8 split points of VGG5 each
    with torch.no_grad():
        net.actor[-1].weight.zero_()
        net.actor[-1].bias.copy_(torch.tensor([float(c == expected) for c in range(8)] * 2))
    policy = tmp_path / "policy.pt"
    save_policy(policy, net, "vgg5", 7, {"episodes": 0})
    config = {
        **QUICK,
        "num-rounds": 2,
        "mode": "split",
        "planner": "fedadapt",
        "policy-path": str(policy),
        "planner-groups": 2,
        "device-profiles": "4,1",
        "link-schedules": "1:50/50/1;1:50/50/1",
        "run-dir": str(tmp_path),
    }
    outcome = run_simulation(ROOT, tmp_path / "flwr-home", run_config=config, timeout=500, **SIMULATION)
    assert outcome.status == "finished:completed", (outcome.details, outcome.logs[-3000:])
    rows, nodes = _run(tmp_path, outcome)
    assert all(m["split-point"] == 7 for m in nodes["1"].values())  # round 1 measures: classic FL
    assert all(m["uplink-mbps"] == 50 for m in nodes["1"].values())
    assert [m["split-point"] for m in nodes["2"].values()] == [expected, expected]  # the policy's choice
    assert all(m["fell-back"] == 0 for m in nodes["2"].values())
    assert rows[-1]["test-accuracy"] > 0.5
