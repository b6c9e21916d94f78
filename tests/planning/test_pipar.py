"""PiPar's (split point, micro-batch) selection: the prediction is the pipeline's critical path, the selection is
the best plan, and it follows bandwidth changes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from edgeflower.models import build_model, profile_model
from edgeflower.planning import Planner, make_planner
from edgeflower.planning.pipar import PiParPlanner, divisors, predict_iteration, select_plan, stage_times
from edgeflower.transport.emulation import LinkProfile


@pytest.fixture(scope="module")
def profile():
    """VGG5's real per-block FLOPs and activation sizes, with times of a 5 GFLOP/s machine (deterministic)."""
    prof = profile_model(build_model("vgg5"), batch_size=50, measure=False)
    blocks = tuple(
        dataclasses.replace(b, fwd_s=50 * max(b.flops, b.out_bytes) / 5e9, bwd_s=100 * max(b.flops, b.out_bytes) / 5e9)
        for b in prof.blocks
    )
    return dataclasses.replace(prof, blocks=blocks)


def test_measured_profile_feeds_the_planner():
    measured = profile_model(build_model("vgg5"), batch_size=50, repeats=1)
    plan = select_plan(measured, 50, 2.0, LinkProfile(50, 50, 1))
    assert 0 <= plan.split_point <= 7 and plan.predicted_s > 0


def _event_simulation(st) -> float:
    """Independent formulation: a list of tasks on resources, each resource serving its tasks in order."""
    if not st.offload:
        return st.m * (st.fwd + st.bwd)
    return _schedule(_stage_tasks(st))


def _stage_tasks(st) -> list[tuple[str, str | None, float, list[str]]]:
    """The tasks of one iteration, ``(name, resource, duration, deps)``: a resource of ``None`` is a pure delay."""
    tasks = []
    for j in range(st.m):
        tasks.append((f"F{j}", "device", st.fwd, []))
    for j in range(st.m):
        tasks += [
            (f"U{j}", "up", st.up_ser, [f"F{j}"]),
            (f"u{j}", None, st.latency, [f"U{j}"]),
            (f"S{j}", "server", st.server, [f"u{j}"]),
        ]
        if st.grads_back:
            tasks += [(f"D{j}", "down", st.down_ser, [f"S{j}"]), (f"d{j}", None, st.latency, [f"D{j}"])]
    if st.grads_back:
        for j in range(st.m):
            tasks.append((f"B{j}", "device", st.bwd, [f"d{j}", f"F{st.m - 1}"]))
    return tasks


def _schedule(tasks: list[tuple[str, str | None, float, list[str]]]) -> float:
    """The end of the last task when each starts as soon as its deps are done and its resource is free."""
    end: dict[str, float] = {}
    free: dict[str, float] = {}
    pending = list(tasks)
    while pending:
        for task in pending:
            name, res, dur, deps = task
            if all(d in end for d in deps):
                # a resource serves its tasks in list order: all earlier tasks on it must be placed already
                earlier = [t for t in tasks[: tasks.index(task)] if t[1] == res and res is not None]
                if all(t[0] in end for t in earlier):
                    start = max([end[d] for d in deps] + [free.get(res, 0.0)] if res else [end[d] for d in deps] + [0])
                    end[name] = start + dur
                    if res:
                        free[res] = end[name]
                    pending.remove(task)
                    break
    return max(end.values())


@pytest.mark.parametrize("mbps", [5, 50, 500])
@pytest.mark.parametrize("slowdown", [1.0, 4.0])
def test_prediction_equals_an_event_simulation_of_the_stage_graph(profile, mbps, slowdown):
    link = LinkProfile(mbps, mbps * 2, latency_ms=3)
    for k, m in itertools.product(range(len(profile.blocks) + 1), divisors(50)):
        st = stage_times(profile, k, m, 50, slowdown, link)
        assert predict_iteration(profile, k, m, 50, slowdown, link) == pytest.approx(_event_simulation(st), rel=1e-9)


@pytest.mark.parametrize("mbps", [1, 10, 100, 1000])
@pytest.mark.parametrize("slowdown", [1.0, 3.0, 10.0])
def test_selection_equals_brute_force_over_predicted_times(profile, mbps, slowdown):
    link = LinkProfile(mbps, mbps, latency_ms=2)
    best = min(
        (predict_iteration(profile, k, m, 50, slowdown, link), k, m)
        for k in range(len(profile.blocks) + 1)
        for m in (divisors(50, 32) if k < len(profile.blocks) else [1])
    )
    plan = select_plan(profile, 50, slowdown, link)
    assert plan.predicted_s == pytest.approx(best[0])
    assert predict_iteration(profile, plan.split_point, plan.micro_batches, 50, slowdown, link) == pytest.approx(
        best[0]
    )


def test_pipelining_beats_sequential_when_link_and_compute_are_comparable(profile):
    link = LinkProfile(20, 20, 1)
    plan = select_plan(profile, 50, 4.0, link, split_points=[3])
    assert plan.micro_batches > 1
    assert plan.predicted_s < predict_iteration(profile, 3, 1, 50, 4.0, link)


def test_planner_moves_work_back_to_the_device_when_bandwidth_drops(profile):
    planner = PiParPlanner(profile, 50)
    assert isinstance(planner, Planner)  # the planner protocol of fixed, exact and FedAdapt
    head_s_per_sample = sum(b.fwd_s + b.bwd_s for b in profile.blocks[:3]) / profile.batch_size
    device_s = 2.0 * head_s_per_sample * 500
    report = {"split-point": 3, "num-examples": 500, "batches": 10, "device-s": device_s, "train-time-s": 9.0}
    fast = {**report, "uplink-bytes": 10_000_000, "uplink-s": 0.08, "downlink-bytes": 10_000_000, "downlink-s": 0.08}
    planner.observe(1, {1: fast})
    assert planner.estimate(1).slowdown == pytest.approx(2.0)
    before = planner.plan(2, [1])[1]
    assert before.split_point < len(profile.blocks)  # a 2x slower device offloads over a 1 Gbit/s link
    planner.observe(2, {1: {**fast, "uplink-s": 800.0, "downlink-s": 800.0}})  # 1000 Mbit/s -> 0.1 Mbit/s
    assert planner.estimate(1).uplink_mbps == pytest.approx(0.1)
    after = planner.plan(3, [1])[1]
    assert after.split_point == len(profile.blocks)  # everything back on the device


def test_fixed_split_point_and_micro_batches_are_respected(profile):
    planner = PiParPlanner(profile, 50, split_point=2, micro_batches=5)
    plan = planner.plan(1, [7])[7]
    assert (plan.split_point, plan.micro_batches) == (2, 5)
    prior = LinkProfile(100, 100, 0)  # the bandwidth a node is assumed to have before it reports one
    assert plan.predicted_s == pytest.approx(predict_iteration(profile, 2, 5, 50, 1.0, prior))
    model = build_model("vgg5")
    built = make_planner("pipar", model, profile, fixed_split=2, batch_size=50, micro_batches=5)
    assert built.plan(1, [7]) == planner.plan(1, [7])  # the factory builds the same planner


def test_invalid_plans_are_rejected(profile):
    with pytest.raises(ValueError, match="split point"):
        stage_times(profile, 99, 1, 50, 1.0, LinkProfile())
    with pytest.raises(ValueError, match="micro-batch"):
        stage_times(profile, 2, 51, 50, 1.0, LinkProfile())
