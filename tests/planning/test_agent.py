"""The FedAdapt agent: PPO trained in the cost-model environment beats no offloading, reacts to a bandwidth drop
like the exact planner; any devices/groups."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from edgeflower.planning import (
    CostModel,
    EnvConfig,
    ExactPlanner,
    FedAdaptPlanner,
    FixedPlanner,
    NodeState,
    OffloadEnv,
    SplitMapper,
    evaluate_policy,
    fedadapt_testbed,
    offload_reward,
    split_points,
    train_agent,
)
from edgeflower.planning.state import STATE_FEATURES, agent_state, bandwidth_feature
from edgeflower.planning.training import node_states_of
from tests._planning_helpers import flop_profile, simulate_rounds


@pytest.fixture(scope="module")
def cost():
    """VGG5 at 100 GFLOP/s (the benchmark machine's speed): a Pi 3 or Pi 4 whose link drops to 5 Mbit/s is faster
    without offloading, so reacting to the drop pays."""
    torch.manual_seed(0)
    prof = flop_profile()
    return CostModel(replace(prof, blocks=tuple(replace(b, fwd_s=b.fwd_s / 2, bwd_s=b.bwd_s / 2) for b in prof.blocks)))


@pytest.fixture(scope="module")
def trained(cost):
    devices = node_states_of(fedadapt_testbed(), overhead_s=0.005)
    env = OffloadEnv(cost, devices, EnvConfig(), seed=0)
    agent, rewards = train_agent(env, episodes=150, seed=0, select_env=OffloadEnv(cost, devices, seed=99))
    return agent, rewards


def test_reward_is_fedadapts_relative_gain_or_loss():
    assert offload_reward([1.0], [2.0]) == pytest.approx(0.5)
    assert offload_reward([4.0], [2.0]) == pytest.approx(-0.5)
    assert offload_reward([2.0, 1.0], [2.0, 2.0]) == pytest.approx(0.5)


def test_action_maps_to_nearest_flop_share_preferring_fewer_bytes(cost):
    mapper = SplitMapper(cost.profile)
    assert mapper.split(1.0) == cost.num_blocks  # no offloading, not "all but the classifier"
    assert mapper.split(0.0) == 0
    assert mapper.split(-3.0) == 0 and mapper.split(7.0) == cost.num_blocks
    for a in (0.03, 0.6, 0.9):
        k = mapper.split(a)
        assert all(abs(mapper.share(k) - a) <= abs(s - a) + 1e-3 for s in mapper.shares)
    assert mapper.split(0.6) == 4  # after pool2 rather than before it (same FLOPs, 4x fewer bytes)


def test_agent_trained_in_the_environment_beats_always_no_offloading(cost, trained):
    agent, rewards = trained
    devices = node_states_of(fedadapt_testbed(), overhead_s=0.005)
    score = evaluate_policy(OffloadEnv(cost, devices, seed=123), lambda s: agent.act(s, explore=False))
    fl = evaluate_policy(OffloadEnv(cost, devices, seed=123), lambda s: [cost.num_blocks] * 3)
    print(f"agent reward {score.reward:.2f} (round time {score.round_ratio:.2f}x FL) vs no offloading {fl.reward:.2f}")
    assert score.reward > fl.reward + 1.0
    assert score.round_ratio < 0.9
    assert len(rewards) == 150


@pytest.mark.parametrize(("num_devices", "num_groups"), [(1, 3), (7, 2), (12, 4)])
def test_environment_and_agent_work_for_any_number_of_devices_and_groups(cost, num_devices, num_groups):
    devices = [NodeState(1.0 + i, 10.0 * (1 + i % 3), 10.0 * (1 + i % 3)) for i in range(num_devices)]
    env = OffloadEnv(cost, devices, EnvConfig(num_groups=num_groups, episode_len=4), seed=0)
    state = env.reset()
    assert len(state) == STATE_FEATURES * num_groups
    agent, rewards = train_agent(env, episodes=3, seed=0)
    assert len(rewards) == 3
    _, reward, _, info = env.step(agent.act(env.reset(), explore=False))
    assert set(info.splits) == set(range(num_devices))
    assert len(info.group_rewards) == num_groups and sum(info.group_rewards) == pytest.approx(reward)
    for bad in ([0] * (num_groups + 1), [0.5] * num_groups, [cost.num_blocks + 1] * num_groups, [-1] * num_groups):
        with pytest.raises(ValueError):
            env.step(bad)


def test_fedadapt_planner_measures_first_then_applies_the_policy_per_group(cost, trained):
    agent, _ = trained
    planner = FedAdaptPlanner(cost, agent.net)
    nodes = [11, 12, 13, 14, 15]
    assert set(split_points(planner.plan(1, nodes)).values()) == {cost.num_blocks}
    replies = {}
    for node, dev in zip(nodes, node_states_of(fedadapt_testbed(), overhead_s=0.005), strict=True):
        t = cost.round_s(cost.num_blocks, dev, 10)
        replies[node] = {"train-time-s": t, "device-s": t, "num-examples": 1000, "uplink-mbps": 75.0}
    planner.observe(1, replies)
    plan = split_points(planner.plan(2, nodes))
    groups = planner.groups[2]
    assert len(set(groups.values())) == 3
    for a in nodes:
        for b in nodes:
            if groups[a] == groups[b]:
                assert plan[a] == plan[b]
    assert plan[11] < cost.num_blocks  # the slowest (Pi 3) group offloads
    # per-node calls give the same plan (the round's groups are computed once, over every observed node)
    assert {n: planner.plan(2, [n])[n].split_point for n in nodes} == plan


@pytest.mark.parametrize("server_scale", [0.4, 1.0])
def test_trained_agent_deployed_with_noisy_measurements_beats_fl_and_tracks_the_exact_planner(
    cost, trained, server_scale
):
    """The emulated testbed (75 -> 5 Mbit/s drop at round 6) as the planners see it: noisy, contended replies."""
    agent, _ = trained

    def devices_at(rnd):
        states = node_states_of(fedadapt_testbed(drop_round=6), rnd, overhead_s=0.005)
        return {i: replace(s, server_scale=server_scale) for i, s in enumerate(states)}

    totals, planned, plans = {}, {}, {}
    for name, planner in {
        "fl": FixedPlanner(cost, cost.num_blocks),
        "exact": ExactPlanner(cost),
        "agent": FedAdaptPlanner(cost, agent.net),
    }.items():
        times, plans[name] = simulate_rounds(planner, cost, devices_at, rounds=10, seed=7)
        totals[name], planned[name] = sum(times), sum(times[1:])  # round 1 is everyone's classic-FL measurement
    print({k: round(v, 3) for k, v in totals.items()}, plans["agent"])
    assert totals["agent"] < 0.8 * totals["fl"] and planned["agent"] < 0.8 * planned["fl"]
    assert totals["agent"] < 1.1 * totals["exact"] and planned["agent"] < 1.1 * planned["exact"]
    # no split that the 5 Mbit/s links make terrible: a dropped node never sends the big conv activations
    for rnd, plan in enumerate(plans["agent"], start=1):
        for n in (1, 3):
            if rnd > 6:
                assert plan[n] in (0, cost.num_blocks - 1, cost.num_blocks), (rnd, plan)


def test_state_carries_each_groups_bandwidth_and_compute_class(cost):
    mapper = SplitMapper(cost.profile)
    groups, splits = {0: 0, 1: 0, 2: 1}, {0: 0, 1: 0, 2: cost.num_blocks}
    times, base = {0: 0.5, 1: 2.0, 2: 1.0}, {0: 4.0, 1: 2.0, 2: 1.0}
    state = agent_state(groups, times, splits, base, {0: 75.0, 1: 5.0, 2: float("inf")}, mapper, 3)
    # group 0's slowest device by measured time is node 1 (its link dropped), group 2 repeats group 1
    b5 = bandwidth_feature(5.0)
    assert state == pytest.approx([0.5, 0.0, b5, 0.5, 0.25, 1.0, 1.0, 0.25, 0.25, 1.0, 1.0, 0.25])
    assert bandwidth_feature(1.0) == 0.0 and bandwidth_feature(1e4) == 1.0 and bandwidth_feature(0.0) == 1.0
    assert bandwidth_feature(5.0) < bandwidth_feature(75.0)


def test_trained_agent_moves_the_dropped_devices_back_after_a_bandwidth_drop_like_the_exact_planner(cost, trained):
    """FedAdapt's changing-bandwidth experiment in simulation: a Pi 3 and a Pi 4 fall from 75 to 5 Mbit/s at
    round 6. The learned policy (not a rule) must stop offloading them once the drop is observed, and the rounds
    from the drop on must be as fast as the exact planner's."""
    agent, _ = trained

    def devices_at(rnd):
        states = node_states_of(fedadapt_testbed(drop_round=6), rnd, overhead_s=0.005)
        return {i: replace(s, server_scale=0.4) for i, s in enumerate(states)}

    times, plans = {}, {}
    for name, planner in {"exact": ExactPlanner(cost), "agent": FedAdaptPlanner(cost, agent.net)}.items():
        times[name], plans[name] = simulate_rounds(planner, cost, devices_at, rounds=10, seed=7)
    print(plans["agent"])
    assert all(set(p.values()) == {0} for p in plans["agent"][1:6])  # rounds 2-6: everyone offloads everything
    for rnd in range(7, 11):  # round 7 is the first plan made after the drop was measured
        plan = plans["agent"][rnd - 1]
        assert plan[1] == plan[3] == cost.num_blocks and plan[0] == plan[2] == 0, (rnd, plan)
    assert sum(times["agent"][5:]) <= 1.05 * sum(times["exact"][5:])
