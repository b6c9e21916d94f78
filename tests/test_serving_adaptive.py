"""Adaptive partitioning: re-planning after a bandwidth or load change picks the cut brute-force measurement picks."""

from __future__ import annotations

import pytest
import torch

from edgeflower.serving import AdaptiveSplitServing, Conditions, CutModel, InferenceNode, NodeClient
from edgeflower.serving.adaptive import best_cuts, brute_force_cut, measure_cut, plan_cut, sensitivity_study
from edgeflower.transport.auth import TokenIssuer
from edgeflower.transport.emulation import DeviceProfile, LinkProfile
from tests._serving_helpers import SECRET, train_briefly

BATCH = 8
DEVICE = 8.0  # the device is 8x slower than the edge node


@pytest.fixture(scope="module")
def vgg(fmnist_train):
    model = train_briefly("vgg5", fmnist_train, 30)
    return model, CutModel.profile(model, BATCH)


def _brute_force(model, cond: Conditions) -> int:
    return brute_force_cut(model, cond, torch.randn(BATCH, *model.spec.in_shape), repeats=5)[0]


def test_replanning_after_a_bandwidth_change_picks_the_brute_force_cut(vgg, fmnist_test):
    model, cm = vgg
    fast = Conditions(bandwidth_mbps=1000, device_slowdown=DEVICE)
    slow = Conditions(bandwidth_mbps=1, device_slowdown=DEVICE)
    with InferenceNode(secret=SECRET) as node:
        client = NodeClient(node.address, TokenIssuer(SECRET).issue(0, 0, 0), LinkProfile(1000, 1000))
        try:
            serving = AdaptiveSplitServing(model, client, cm, fast, DeviceProfile(DEVICE), observe=("bandwidth",))
            x = fmnist_test.x[:BATCH]
            with torch.no_grad():
                want = model(x)
            assert torch.allclose(serving.infer(x), want, atol=1e-4)
            assert serving.cut == _brute_force(model, fast)
            fixed = serving.cut
            client.link.set_profile(LinkProfile(1, 1))  # the bandwidth drops
            for _ in range(8):
                assert torch.allclose(serving.infer(x), want, atol=1e-4)
            assert serving.cut != fixed and serving.planner.replans >= 1
            assert serving.cut == _brute_force(model, slow)
            assert measure_cut(model, serving.cut, slow, x) < measure_cut(model, fixed, slow, x)
            client.link.set_profile(LinkProfile(1000, 1000))  # back up: nothing crosses the link at this cut,
            for _ in range(16):  # so only the periodic probes can notice
                assert torch.allclose(serving.infer(x), want, atol=1e-4)
            assert serving.cut == fixed
        finally:
            client.close()


def test_edge_load_observed_from_compute_time_moves_the_cut_to_the_device(vgg, fmnist_test):
    model, cm = vgg
    cond = Conditions(bandwidth_mbps=1000, device_slowdown=4.0)
    with InferenceNode(secret=SECRET) as node:
        client = NodeClient(node.address, TokenIssuer(SECRET).issue(0, 0, 0), LinkProfile(1000, 1000))
        try:
            serving = AdaptiveSplitServing(model, client, cm, cond, DeviceProfile(4.0), observe=("load",))
            x = fmnist_test.x[:BATCH]
            serving.infer(x)
            before = serving.cut
            node.device = DeviceProfile(20.0)  # another tenant takes 95 % of the edge CPU
            for _ in range(4):
                serving.infer(x)
            assert serving.cut > before
            loaded = Conditions(bandwidth_mbps=1000, device_slowdown=4.0, edge_slowdown=20.0)
            best, measured = brute_force_cut(model, loaded, x, repeats=5)
            assert plan_cut(cm, loaded)[0] == serving.cut
            # the last two cuts differ by the tiny fc2 only: a near tie, so compare latencies rather than indices
            assert measure_cut(model, serving.cut, loaded, x, repeats=5) <= 1.15 * measured[best]
        finally:
            client.close()


def test_sensitivity_study_estimates_track_measurements(vgg):
    """Median relative error of the estimates within 50 % (benchmark ``adaptive``: ``cut_estimation_error`` 13 %).

    The profile is taken right before the study, not when the module's model was trained, so both see the machine
    in the same state; a study disturbed by other load (the two cores are shared) is repeated once, and the better
    one kept."""
    model, _ = vgg
    conds = [
        Conditions(bandwidth_mbps=bw, device_slowdown=DEVICE, edge_load=load) for bw in (20, 200) for load in (0, 0.5)
    ]
    attempts = []
    for _ in range(2):
        cm = CutModel.profile(model, BATCH)
        rows = sensitivity_study(model, conds, BATCH, repeats=3, cut_model=cm, progress=False)
        errors = sorted(abs(r["estimated_s"] - r["measured_s"]) / r["measured_s"] for r in rows)
        attempts.append((errors[len(errors) // 2], rows, errors))
        if attempts[-1][0] <= 0.5:
            break
    median, rows, errors = min(attempts, key=lambda a: a[0])
    assert len(rows) == len(conds) * (model.num_blocks + 1)
    assert median <= 0.5, errors
    measured = {(r["bandwidth_mbps"], r["edge_load"], r["cut"]): r["measured_s"] for r in rows}
    planned, best = best_cuts(rows, "estimated_s"), best_cuts(rows, "measured_s")
    for cond, k in planned.items():
        key = dict(cond)["bandwidth_mbps"], dict(cond)["edge_load"]
        assert measured[(*key, k)] <= 1.2 * measured[(*key, best[cond])], (cond, k, best[cond])
