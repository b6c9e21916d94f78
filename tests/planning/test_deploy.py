"""Deployment fixes: canonical groups, deterministic actions, whole-round planning, robust node estimates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeflower.planning import (
    ActorCritic,
    CostModel,
    EnvConfig,
    ExactPlanner,
    FedAdaptPlanner,
    NodeState,
    ObservationHistory,
    OffloadEnv,
    fedadapt_testbed,
    group_nodes,
    node_features,
    split_points,
)
from edgeflower.planning.state import STATE_FEATURES
from edgeflower.planning.training import node_states_of
from tests._planning_helpers import flop_profile, simulate_rounds


@pytest.fixture(scope="module")
def cost():
    return CostModel(flop_profile())


def _testbed_at(rnd: int, server_scale: float = 0.4) -> dict[int, NodeState]:
    return {
        i: replace(s, server_scale=server_scale)
        for i, s in enumerate(node_states_of(fedadapt_testbed(drop_round=6), rnd, overhead_s=0.005))
    }


def test_group_order_is_canonical_under_noise_permutation_and_across_rounds():
    rng = np.random.default_rng(0)
    classes = [8.0, 8.0, 4.0, 4.0, 2.0]
    reference = None
    for _round in range(20):  # every round: new measurement noise, nodes listed in a new order
        states = {n: NodeState(s * float(np.exp(rng.normal(0, 0.1))), 75.0, 75.0) for n, s in enumerate(classes)}
        order = [int(n) for n in rng.permutation(len(classes))]
        groups = group_nodes({n: node_features(states[n]) for n in order}, 3)
        reference = reference or groups
        assert groups == reference == {0: 0, 1: 0, 2: 1, 3: 1, 4: 2}  # slowest first, same ids every round


def test_environment_state_does_not_depend_on_the_order_of_the_devices(cost):
    devices = node_states_of(fedadapt_testbed(), overhead_s=0.005)
    quiet = EnvConfig(jitter=0.0, noise=0.0, spike_prob=0.0, drop_prob=0.0, class_slow_prob=0.0)
    quiet = replace(quiet, server_range=(0.5, 0.5))
    a = OffloadEnv(cost, devices, quiet, seed=0)
    b = OffloadEnv(cost, devices[::-1], quiet, seed=0)
    assert a.reset() == pytest.approx(b.reset())
    for action in ([0, 4, 7], [2, 0, 6]):
        sa, ra, _, _ = a.step(action)
        sb, rb, _, _ = b.step(action)
        assert sa == pytest.approx(sb) and ra == pytest.approx(rb)


def _observed_planner(cost, policy) -> FedAdaptPlanner:
    planner = FedAdaptPlanner(cost, policy)
    simulate_rounds(planner, cost, _testbed_at, rounds=2, seed=3)
    return planner


def test_deployed_actions_are_the_most_likely_cut_and_independent_of_how_nodes_are_asked(cost):
    torch.manual_seed(0)
    policy = ActorCritic(STATE_FEATURES * 3, 3, cost.num_blocks + 1)
    policy.train()  # train mode must not matter: no dropout, no sampling
    a, b = _observed_planner(cost, policy), _observed_planner(cost, policy)
    nodes = [0, 1, 2, 3, 4]
    full = a.plan(3, nodes)
    assert b.plan(3, nodes[::-1]) == full  # same observations: same plan, whatever the order
    assert {n: b.plan(3, [n])[n] for n in nodes} == full  # one node at a time: the round's cached groups
    assert a.plan(3, nodes) == full  # asking again changes nothing
    state = a.actions[3]
    fresh = FedAdaptPlanner(cost, policy)
    fresh.history = b.history
    assert fresh.plan(3, [2]) == {2: full[2]} and fresh.actions[3] == pytest.approx(state)
    with torch.no_grad():
        logits, values = policy(torch.ones(1, STATE_FEATURES * 3))
    assert logits.shape == (1, 3, cost.num_blocks + 1) and values.shape == (1, 3)
    assert policy.choose([1.0] * STATE_FEATURES * 3) == [int(i) for i in logits[0].argmax(-1)]
    with torch.no_grad():  # equal logits: the larger split point (less offloading)
        policy.actor[-1].weight.zero_()
        policy.actor[-1].bias.zero_()
    assert policy.choose([0.0] * STATE_FEATURES * 3) == [cost.num_blocks] * 3
    with pytest.raises(ValueError, match="cuts"):
        FedAdaptPlanner(cost, ActorCritic(STATE_FEATURES * 3, 3, cost.num_blocks))


def test_a_contended_round_does_not_move_the_speed_estimate(cost):
    history = ObservationHistory(cost)
    fl = cost.head_compute_s(cost.num_blocks) * 6
    for rnd, factor in enumerate([1.0, 1.0, 2.5, 1.0], start=1):  # round 3 measured under contention
        history.add(rnd, 1, {"train-time-s": 4 * fl * factor, "device-s": 4 * fl * factor, "batches": 6})
        state = history.state(1)
        assert state is not None
        if rnd >= 3:
            assert state.slowdown == pytest.approx(4.0)
    assert ObservationHistory(cost, window=1).window == 1
    with pytest.raises(ValueError):
        ObservationHistory(cost, window=0)


def test_nodes_that_never_offloaded_use_the_fleets_server_speed(cost):
    planner = ExactPlanner(cost)
    fast_server = 0.3  # the profile overstates the edge server's time, as on a loaded machine
    devices = {0: NodeState(8.0, 75, 75, server_scale=fast_server), 1: NodeState(1.6, 75, 75, server_scale=fast_server)}
    simulate_rounds(planner, cost, lambda rnd: devices, rounds=1, noise=0.0, spike_prob=0.0)
    planner.plans.clear()
    # node 0 offloads and measures the server; node 1 (fast device) has not offloaded yet
    simulate_rounds(planner, cost, lambda rnd: devices, rounds=1, noise=0.0, spike_prob=0.0)
    st = planner.history.state(1)
    assert st is not None and st.server_scale == pytest.approx(fast_server, rel=1e-6)
    k = planner.best_split(1)
    best = min(cost.split_points, key=lambda j: cost.iteration_s(j, devices[1]))
    assert cost.iteration_s(k, devices[1]) == pytest.approx(cost.iteration_s(best, devices[1]))


def test_exact_planner_picks_k0_when_the_cost_model_says_so_and_fl_when_fl_is_best(cost):
    planner = ExactPlanner(cost)
    cases = {
        0: NodeState(8.0, 1000.0, 1000.0, server_scale=0.3),  # slow device, fast link and server: all on the server
        1: NodeState(1.0, 1.0, 1.0, server_scale=1.0),  # fast device, 1 Mbit/s: classic FL
    }
    for n, st in cases.items():
        planner.history._states[n] = planner.history._update(None, _split_obs(cost, n, st))
    plan = split_points(planner.plan(2, [0, 1]))
    assert plan == {0: 0, 1: cost.num_blocks}
    for n, st in cases.items():
        assert plan[n] == min(cost.split_points, key=lambda j: (cost.iteration_s(j, st), -j))


def _split_obs(cost, node, st, k=4, n=10):
    from edgeflower.planning.observations import Observation

    p = cost.predict(k, st)
    return Observation(
        1, node, k, n, p.total_s * n, p.device_s * n, p.uplink_s * n, p.server_s * n, p.downlink_s * n,
        cost.uplink_bytes(k) * n, cost.downlink_bytes(k) * n, st.uplink_mbps, st.downlink_mbps,
    )  # fmt: skip
