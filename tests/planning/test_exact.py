"""The exact planner: its choice is the brute-force optimum, and it re-plans when bandwidth changes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from edgeflower.models import build_model
from edgeflower.planning import CostModel, ExactPlanner, FixedPlanner, NodeState, make_planner, split_points
from tests._planning_helpers import flop_profile


@pytest.fixture(scope="module")
def model_profile():
    torch.manual_seed(0)
    model = build_model("vgg5")
    return model, flop_profile()


def _fl_metrics(cost: CostModel, state: NodeState, batches: int = 10, **extra: float) -> dict[str, float]:
    t = cost.round_s(cost.num_blocks, state, batches)
    return {"train-time-s": t, "device-s": t, "num-examples": 100 * batches, "split-point": cost.num_blocks, **extra}


def test_exact_planner_choice_equals_brute_force_over_all_split_points(model_profile):
    _, profile = model_profile
    cost = CostModel(profile)
    rng = np.random.default_rng(0)
    for trial in range(20):
        nodes = {
            n: NodeState(
                slowdown=float(rng.uniform(1, 12)),
                uplink_mbps=float(rng.choice([2, 5, 20, 75, 300])),
                downlink_mbps=float(rng.choice([2, 5, 20, 75, 300])),
                server_scale=float(rng.uniform(0.5, 2)),
                overhead_s=float(rng.uniform(0, 0.02)),
            )
            for n in range(3)
        }
        planner = ExactPlanner(cost)
        for n, st in nodes.items():
            planner.history._states[n] = planner.history._update(None, _as_obs(cost, n, st))
        plan = split_points(planner.plan(2, list(nodes)))
        for n, st in nodes.items():
            brute = min(cost.iteration_s(k, st) for k in range(cost.num_blocks + 1))
            assert cost.iteration_s(plan[n], st) == pytest.approx(brute, rel=1e-9), (trial, n)
        # per-node optima are also the joint optimum of the round time (the slowest node)
        joint = min(
            max(cost.iteration_s(k, nodes[n]) for n, k in zip(nodes, ks, strict=True))
            for ks in itertools.product(range(cost.num_blocks + 1), repeat=len(nodes))
        )
        assert max(cost.iteration_s(plan[n], nodes[n]) for n in nodes) == pytest.approx(joint, rel=1e-9)


def _as_obs(cost: CostModel, node: int, st: NodeState):
    """An observation that makes the history's estimate exactly ``st`` (reported bandwidth, split round)."""
    from edgeflower.planning.observations import Observation

    k, n = 4, 10
    pred = cost.predict(k, st)
    return Observation(
        server_round=1,
        node_id=node,
        split_point=k,
        batches=n,
        train_s=pred.total_s * n,
        device_s=pred.device_s * n,
        uplink_s=pred.uplink_s * n,
        server_s=pred.server_s * n,
        downlink_s=pred.downlink_s * n,
        uplink_bytes=cost.uplink_bytes(k) * n,
        downlink_bytes=cost.downlink_bytes(k) * n,
        uplink_mbps=st.uplink_mbps,
        downlink_mbps=st.downlink_mbps,
    )


def test_first_round_is_classic_fl_then_slow_devices_offload(model_profile):
    model, profile = model_profile
    planner = make_planner("exact", model, profile)
    assert split_points(planner.plan(1, [10, 11])) == {10: model.num_blocks, 11: model.num_blocks}
    cost = CostModel(profile)
    planner.observe(
        1,
        {
            10: _fl_metrics(cost, NodeState(8.0), **{"uplink-mbps": 75.0, "downlink-mbps": 75.0}),
            11: _fl_metrics(cost, NodeState(1.0), **{"uplink-mbps": 1.0, "downlink-mbps": 1.0}),
        },
    )
    plan = split_points(planner.plan(2, [10, 11]))
    assert plan[10] < model.num_blocks  # slow device on a fast link offloads
    assert plan[11] == model.num_blocks  # fast device on a slow link does not


def test_bandwidth_drop_moves_work_back_to_the_device(model_profile):
    model, profile = model_profile
    cost = CostModel(profile)
    planner = make_planner("exact", model, profile)
    slow = NodeState(4.0, 75.0, 75.0, overhead_s=0.005)
    planner.observe(1, {1: _fl_metrics(cost, slow)})
    k_fast = planner.plan(2, [1])[1].split_point
    assert k_fast < model.num_blocks
    # the node trains at k_fast on 75 Mbit/s and measures its transfers
    planner.observe(2, {1: _split_metrics(cost, k_fast, slow)})
    assert planner.plan(3, [1])[1].split_point == k_fast
    # bandwidth drops to 5 Mbit/s: measured transfer times grow, the planner moves blocks back to the device
    dropped = slow.with_bandwidth(5.0)
    planner.observe(3, {1: _split_metrics(cost, k_fast, dropped)})
    k_slow = planner.plan(4, [1])[1].split_point
    assert k_slow > k_fast
    assert cost.iteration_s(k_slow, dropped) < cost.iteration_s(k_fast, dropped)
    state = planner.history.state(1)
    assert state is not None and state.uplink_mbps == pytest.approx(5.0, rel=1e-6)


def _split_metrics(cost: CostModel, k: int, st: NodeState, batches: int = 10) -> dict[str, float]:
    p = cost.predict(k, st)
    return {
        "train-time-s": p.total_s * batches,
        "device-s": p.device_s * batches,
        "uplink-s": p.uplink_s * batches,
        "server-s": p.server_s * batches,
        "downlink-s": p.downlink_s * batches,
        "num-examples": 100 * batches,
        "split-point": k,
    }


def test_fixed_planner_and_bad_kinds(model_profile):
    model, profile = model_profile
    cost = CostModel(profile)
    assert split_points(FixedPlanner(cost, 3).plan(1, [1, 2])) == {1: 3, 2: 3}
    assert split_points(make_planner("fixed", model, profile).plan(1, [5])) == {5: model.num_blocks}
    with pytest.raises(ValueError, match="out of range"):
        FixedPlanner(cost, 99)
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("oracle", model, profile)
    with pytest.raises(ValueError, match="needs a policy"):
        make_planner("fedadapt", model, profile)
    assert math.isinf(NodeState().uplink_mbps)
