"""Planner glue for EdgeStrategy, and the emulated testbed's run-config strings."""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import FedAvg

from edgeflower.planning import (
    PlannedRounds,
    PlanningRecorder,
    fedadapt_testbed,
    parse_link_schedules,
    planner_strategy,
)
from edgeflower.strategies.edge import EdgeStrategy


class _Planner:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []
        self.observed: dict[int, dict] = {}

    def plan(self, server_round, node_ids):
        self.calls.append((server_round, list(node_ids)))
        return {n: n % 3 for n in node_ids}

    def observe(self, server_round, replies):
        self.observed[server_round] = replies


class _Recorder:
    def __init__(self) -> None:
        self.rounds: list[int] = []

    def on_train_round(self, server_round, seconds, replies, aggregated):
        self.rounds.append(server_round)


def test_planned_rounds_merge_split_point_into_the_base_plan_once_per_node():
    planner = _Planner()
    plan_fn = PlannedRounds(planner, lambda rnd, node, k: {"lr": 0.1, "edge": k < 3})
    assert plan_fn(1, 4) == {"lr": 0.1, "edge": True, "split-point": 1}
    assert plan_fn(1, 4) == {"lr": 0.1, "edge": True, "split-point": 1}
    assert planner.calls == [(1, [4])]


def test_planning_recorder_feeds_numeric_metrics_then_forwards():
    planner, inner = _Planner(), _Recorder()
    rec = PlanningRecorder(planner, inner)
    rec.on_train_round(2, 1.0, {5: {"train-time-s": 1.5, "timeline": "[]", "split-point": 3}}, {})
    assert planner.observed[2] == {5: {"train-time-s": 1.5, "split-point": 3.0}}
    assert inner.rounds == [2]
    assert isinstance(planner_strategy(FedAvg(), planner), EdgeStrategy)


def test_fedadapt_testbed_round_trips_through_run_config():
    bed = fedadapt_testbed(drop_round=6)
    assert [n.name for n in bed.nodes] == ["pi3-a", "pi3-b", "pi4-a", "pi4-b", "jetson"]
    cfg = bed.run_config()
    assert cfg["device-profiles"] == "8,8,4,4,2"
    schedules = parse_link_schedules(cfg["link-schedules"])
    for i, node in enumerate(bed.nodes):
        for rnd in (1, 5, 6, 10):
            assert schedules[i].at(rnd) == node.link.at(rnd)
    assert schedules[1].at(6).uplink_mbps == 5.0 and schedules[0].at(6).uplink_mbps == 75.0
    with pytest.raises(ValueError, match="round:up/down"):
        parse_link_schedules("1:75/75/0|x")
