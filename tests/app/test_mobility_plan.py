"""The app's mobility schedule: parsing, the Mobility part of each node's plan, and the ServerApp following moves."""

from __future__ import annotations

import pytest

from edgeflower.app.mobility import (
    MobilityTracker,
    Move,
    mobility_plan,
    move_order_from_plan,
    parse_mobility,
    trigger_from_plan,
)
from edgeflower.app.plan import NodePlan
from edgeflower.device.mobility import write_trigger
from edgeflower.edge.pool import EdgePool
from edgeflower.transport.auth import TokenIssuer, TokenVerifier

SECRET = b"mobility-plan-test-secret-0123456789abcdef"
NODES = [30, 10, 20]  # positions follow the sorted ids: 10 -> 0, 20 -> 1, 30 -> 2


def _pool() -> EdgePool:
    return EdgePool(["127.0.0.1:1", "127.0.0.1:2"], TokenIssuer(SECRET), ["edge-0", "edge-1"])


def test_mobility_schedule_parses_every_entry_and_rejects_bad_ones_with_the_expected_form():
    assert parse_mobility(" 0@2:0.5->1, 3@4:0.9->0 ") == [Move(0, 2, 0.5, 1), Move(3, 4, 0.9, 0)]
    assert parse_mobility("") == []
    for bad in ("0@2:0.5", "a@2:0.5->1", "0@2:1.0->1", "0@0:0.5->1"):
        with pytest.raises(ValueError, match="bad mobility entry"):
            parse_mobility(bad)


def test_only_the_scheduled_node_gets_a_move_and_every_node_gets_a_token_per_edge_bound_to_it():
    pool = _pool()
    moves = parse_mobility("1@2:0.5->0")  # position 1 = node 20, which starts on edge 1
    plans = {node: mobility_plan(moves, "migrate", pool, 7, node, 2, NODES) for node in NODES}
    assert {node: p.edge_index for node, p in plans.items()} == {10: 0, 20: 1, 30: 0}
    assert [node for node, p in plans.items() if p.move is not None] == [20]
    move = plans[20].move
    assert move is not None and move.edge == 0 and move.fraction == 0.5 and move.mode == "migrate"
    for e, token in enumerate(plans[20].move_tokens):
        claims = TokenVerifier(SECRET, f"edge-{e}").verify(token)
        assert claims.owner == (7, 20, 2)
        with pytest.raises(Exception, match="edge server"):
            TokenVerifier(SECRET, f"edge-{1 - e}").verify(token)  # a token opens only the edge it names
    assert mobility_plan(moves, "migrate", pool, 7, 20, 3, NODES).move is None  # another round: no move


def test_a_move_to_the_edge_a_node_is_already_on_is_no_move_and_an_unknown_edge_is_refused():
    pool = _pool()
    assert mobility_plan(parse_mobility("0@1:0.5->0"), "migrate", pool, 1, 10, 1, NODES).move is None
    with pytest.raises(ValueError, match="only 2 edge servers"):
        mobility_plan(parse_mobility("0@1:0.5->5"), "migrate", pool, 1, 10, 1, NODES)


def test_move_order_from_the_plan_moves_at_the_scheduled_batch_with_the_destinations_token():
    pool = _pool()
    plan = mobility_plan(parse_mobility("2@1:0.9->1"), "restart", pool, 1, 30, 1, NODES)
    order = move_order_from_plan(plan, total_batches=10)
    assert order is not None
    assert (order.at_batch, order.destination, order.mode) == (9, "127.0.0.1:2", "restart")
    assert order.token == plan.move_tokens[1]
    assert move_order_from_plan(mobility_plan([], "migrate", pool, 1, 30, 1, NODES), 10) is None
    assert move_order_from_plan(None, 10) is None  # a plan without mobility entries
    connect = object()  # how the node reaches edge servers (e.g. over TLS) carries over to the move
    assert move_order_from_plan(plan, 10, connect).connect is connect  # type: ignore[arg-type]


def test_trigger_needs_a_move_trigger_file_in_the_node_config(tmp_path):
    plan = mobility_plan([], "migrate", _pool(), 1, 20, 1, NODES)
    assert trigger_from_plan(plan, {}) is None
    assert trigger_from_plan(None, {"move-trigger": str(tmp_path / "move.json")}) is None  # no edge servers listed
    connect = object()
    trigger = trigger_from_plan(plan, {"move-trigger": str(tmp_path / "move.json")}, connect)  # type: ignore[arg-type]
    assert trigger is not None and trigger.poll(0) is None  # nothing fired yet
    write_trigger(str(tmp_path / "move.json"), 0)
    order = trigger.poll(3)
    assert order is not None and order.at_batch == 3 and order.connect is connect


def test_server_app_follows_a_moved_node_to_its_new_edge_in_the_next_round():
    pool = _pool()
    for node in sorted(NODES):
        pool.edge_of(node)
    tracker = MobilityTracker(pool)
    replies = {10: {"moved-to-edge": 1}, 20: {"moved-to-edge": -1}, 30: {}}
    tracker.on_train_round(2, 1.0, replies, {})
    assert pool.assign(1, 10, 3).address == "127.0.0.1:2"  # node 10 moved from edge 0 to edge 1
    assert pool.assign(1, 20, 3).address == "127.0.0.1:2"  # unmoved: still on edge 1
    assigned = pool.assign(1, 20, 3)  # the same through the NodePlan a user's own ServerApp sends
    sent = NodePlan(2, edge_address=assigned.address, edge_token=assigned.token).to_config()
    assert NodePlan.from_config(sent, num_blocks=7).edge_address == "127.0.0.1:2"
    assert mobility_plan([], "migrate", pool, 1, 10, 3, NODES).edge_index == 1
