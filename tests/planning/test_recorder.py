"""PlanningRecorder feeds a round's numeric reply metrics to the planner, then forwards the round."""

from __future__ import annotations

from edgeflower.planning import Planner, PlanningRecorder, SplitPlan


class _Planner:
    def __init__(self) -> None:
        self.observed: dict[int, dict] = {}

    def plan(self, server_round, node_ids):
        return {n: SplitPlan(n % 3) for n in node_ids}

    def observe(self, server_round, replies):
        self.observed[server_round] = replies


class _Recorder:
    def __init__(self) -> None:
        self.rounds: list[int] = []

    def on_train_round(self, server_round, seconds, replies, aggregated):
        self.rounds.append(server_round)


def test_planning_recorder_feeds_numeric_metrics_then_forwards():
    planner, inner = _Planner(), _Recorder()
    assert isinstance(planner, Planner)  # the one planner protocol
    rec = PlanningRecorder(planner, inner)
    rec.on_train_round(2, 1.0, {5: {"train-time-s": 1.5, "timeline": "[]", "split-point": 3, "fell-back": True}}, {})
    assert planner.observed[2] == {5: {"train-time-s": 1.5, "split-point": 3.0}}
    assert inner.rounds == [2]
