"""EdgeStrategy asks a round plan function once per round, for exactly the nodes the inner strategy sampled."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from edgeflower.strategies.edge import EdgeStrategy


class _Grid(Grid):
    """Just enough of a Grid for configure_train to sample three nodes."""

    def get_node_ids(self):
        return [11, 22, 33]

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, *args, **kwargs):
        raise NotImplementedError

    def pull_messages(self, *args, **kwargs):
        raise NotImplementedError

    def send_and_receive(self, *args, **kwargs):
        raise NotImplementedError

    def set_run(self, *args, **kwargs):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _configure(strategy: EdgeStrategy, rnd: int) -> list:
    arrays = ArrayRecord({"w": torch.zeros(2)})
    return list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": 0.1}), _Grid()))


def test_round_plan_fn_is_asked_once_per_round_with_the_sampled_nodes():
    calls: list[tuple[int, list[int]]] = []

    def plan_round(rnd, node_ids):
        calls.append((rnd, list(node_ids)))
        return {n: {"split-point": len(node_ids), "edge-addresses": ["a:1", "b:2"]} for n in node_ids}

    strategy = EdgeStrategy(FedAvg(fraction_train=1.0, min_available_nodes=3), round_plan_fn=plan_round)
    messages = _configure(strategy, 1)
    assert len(calls) == 1 and sorted(calls[0][1]) == [11, 22, 33] and calls[0][0] == 1
    assert [m.metadata.dst_node_id for m in messages] == calls[0][1]  # in the order of the inner strategy's messages
    for msg in messages:
        config = msg.content["config"]
        assert config["split-point"] == 3 and config["lr"] == 0.1  # merged into the base config
        assert config["edge-addresses"] == ["a:1", "b:2"]
    assert set(strategy.last_plans) == {11, 22, 33}
    _configure(strategy, 2)
    assert [rnd for rnd, _ in calls] == [1, 2]


def test_a_round_plan_that_leaves_out_a_sampled_node_or_two_plan_functions_are_refused():
    strategy = EdgeStrategy(FedAvg(fraction_train=1.0, min_available_nodes=3), round_plan_fn=lambda rnd, ns: {})
    with pytest.raises(ValueError, match=r"no plan for nodes \[.*\]"):
        _configure(strategy, 1)
    with pytest.raises(ValueError, match="not both"):
        EdgeStrategy(FedAvg(), plan_fn=lambda r, n: {}, round_plan_fn=lambda r, ns: {})
