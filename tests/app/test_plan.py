"""NodePlan, the ServerApp-ClientApp contract: it survives Flower's ConfigRecord with real lists, and every bad
value fails with an error that names its key."""

from __future__ import annotations

import math

import pytest
from flwr.app import ConfigRecord

from edgeflower.app.plan import Mobility, NodePlan, PlanError, PlannedMove

TOKENS = ("token-for-edge-0", "token-for-edge-1")


def _full_plan() -> NodePlan:
    mobility = Mobility(1, ("127.0.0.1:1", "127.0.0.1:2"), TOKENS, PlannedMove(0, 0.5, "restart"))
    return NodePlan(3, 0.05, 4, 0.25, "127.0.0.1:2", "device-token", mobility)


def test_a_plan_round_trips_through_a_flower_config_record_with_real_lists():
    plan = _full_plan()
    record = ConfigRecord({"lr": 0.1, "server-round": 3, "proximal-mu": 0.01, **plan.to_config()})
    assert record["edge-addresses"] == ["127.0.0.1:1", "127.0.0.1:2"]  # a list, not a comma-joined string
    assert record["move-tokens"] == list(TOKENS)
    assert NodePlan.from_config(record, num_blocks=7) == plan  # Flower's own keys are not the plan's
    assert NodePlan.from_config(NodePlan(7).to_config(), num_blocks=7) == NodePlan(7)


def test_absent_values_are_left_out_and_a_config_without_a_plan_is_classic_fl():
    assert NodePlan(7).to_config() == {"split-point": 7, "microbatches": 1}
    assert NodePlan.from_config({"server-round": 1}, num_blocks=7) == NodePlan(7)
    assert NodePlan.from_config({"lr": 0.2}, num_blocks=7).lr == 0.2  # the train config's learning rate
    with pytest.raises(PlanError, match="'split-point': is missing"):
        NodePlan.from_config({})


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"split-point": 8}, "split-point"),  # more blocks than the model has
        ({"split-point": -1}, "split-point"),
        ({"split-point": "3"}, "split-point"),
        ({"split-point": True}, "split-point"),
        ({"microbatches": 0}, "microbatches"),
        ({"lr": math.nan}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"predicted-iter-s": "fast"}, "predicted-iter-s"),
        ({"edge-address": ""}, "edge-address"),
        ({"edge-addresses": "127.0.0.1:1,127.0.0.1:2"}, "edge-addresses"),  # the old comma-joined form
        ({"move-tokens": ["only-one"]}, "move-tokens"),
        ({"edge-index": 2}, "edge-index"),
        ({"move-edge": 5}, "move-edge"),
        ({"move-fraction": 1.0}, "move-fraction"),
        ({"move-mode": "teleport"}, "move-mode"),
    ],
)
def test_every_bad_value_fails_with_an_error_naming_its_key(change, key):
    config = {**_full_plan().to_config(), **change}
    with pytest.raises(PlanError, match=f"'{key}'") as info:
        NodePlan.from_config(config, num_blocks=7)
    assert info.value.key == key


def test_a_plan_that_offloads_needs_its_edge_server_and_both_halves_of_it():
    with pytest.raises(PlanError, match=r"'edge-address'.*needs an edge server"):
        NodePlan.from_config({"split-point": 3}, num_blocks=7)
    config = _full_plan().to_config()
    del config["edge-token"]
    with pytest.raises(PlanError, match="'edge-token'"):
        NodePlan.from_config(config, num_blocks=7)
    del config["move-tokens"]
    with pytest.raises(PlanError, match="'move-tokens': is missing"):
        NodePlan.from_config({**config, "edge-token": "t"}, num_blocks=7)


def test_errors_do_not_quote_tokens():
    config = {**_full_plan().to_config(), "move-tokens": ["token-for-edge-0", 7]}
    with pytest.raises(PlanError) as info:
        NodePlan.from_config(config, num_blocks=7)
    assert "token-for-edge-0" not in str(info.value) and info.value.key == "move-tokens"
