"""The ServerApp's round plans: the planner is asked once per round for all of the round's nodes, and each node
gets a NodePlan with its edge server and mobility entries only when it offloads."""

from __future__ import annotations

import base64
import json

import torch
from flwr.app import ConfigRecord

from edgeflower.app.mobility import parse_mobility
from edgeflower.app.plan import NodePlan
from edgeflower.app.rounds import RoundPlans
from edgeflower.app.server_app import run_strategy, start_edges
from edgeflower.config import AppConfig
from edgeflower.edge.pool import EdgePool
from edgeflower.planning import SplitPlan
from edgeflower.transport.auth import TokenIssuer, TokenVerifier

SECRET = b"round-plans-test-secret-0123456789abcdef"
BLOCKS = 7


class _RecordingPlanner:
    """Offloads (k = 3, m = 2) for even node ids, classic FL for odd ones."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []

    def plan(self, server_round, node_ids):
        self.calls.append((server_round, list(node_ids)))
        return {n: SplitPlan(3, 2, 0.5) if n % 2 == 0 else SplitPlan(BLOCKS) for n in node_ids}

    def observe(self, server_round, replies):
        pass


def _pool() -> EdgePool:
    return EdgePool(["127.0.0.1:1", "127.0.0.1:2"], TokenIssuer(SECRET), ["edge-0", "edge-1"])


def test_the_planner_is_asked_once_per_round_for_all_of_the_rounds_nodes():
    planner, rounds = _RecordingPlanner(), []
    plans = RoundPlans(planner, BLOCKS, lambda rnd: 0.1 / rnd, on_round=lambda rnd, k: rounds.append((rnd, k)))
    first = plans(1, [4, 5, 6])
    assert planner.calls == [(1, [4, 5, 6])]
    assert rounds == [(1, 3)]  # once per round, with the first node's split point
    plans(2, [5, 4])
    assert planner.calls[-1] == (2, [5, 4]) and len(planner.calls) == 2
    assert first[4] == {"split-point": 3, "microbatches": 2, "lr": 0.1, "predicted-iter-s": 0.5}
    assert first[5] == {"split-point": BLOCKS, "microbatches": 1, "lr": 0.1}


def test_offloading_nodes_get_their_edge_server_token_and_mobility_as_a_node_plan():
    pool = _pool()
    plans = RoundPlans(
        _RecordingPlanner(), BLOCKS, lambda rnd: 0.1, pool, 9, parse_mobility("1@2:0.5->0"), "migrate",
        all_nodes=lambda: [31, 10, 20],
    )  # fmt: skip
    sent = plans(2, [20, 10, 31])
    assert "edge-address" not in sent[31] and "edge-addresses" not in sent[31]  # classic FL: no session
    for node in (10, 20):
        plan = NodePlan.from_config(ConfigRecord(sent[node]), num_blocks=BLOCKS)
        assert plan.mobility is not None and plan.edge_address == pool.addresses[plan.mobility.edge_index]
        claims = TokenVerifier(SECRET, f"edge-{plan.mobility.edge_index}").verify(str(plan.edge_token))
        assert claims.owner == (9, node, 2)
        assert list(plan.mobility.edge_addresses) == pool.addresses
    moved = NodePlan.from_config(sent[20], num_blocks=BLOCKS).mobility  # position 1 among all nodes: node 20
    assert moved is not None and moved.move is not None and (moved.move.edge, moved.move.fraction) == (0, 0.5)
    assert NodePlan.from_config(sent[10], num_blocks=BLOCKS).mobility.move is None  # type: ignore[union-attr]


def _lifetime_s(token: str) -> float:
    """``exp - iat`` of a token, read from its body (the in-process pool's secret is its own)."""
    body = token.split(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims["exp"] - claims["iat"]


def test_a_rounds_edge_tokens_live_as_long_as_flowers_round_timeout():
    """``round-timeout`` is Flower's wait for a round's replies and the lifetime of the round's device and
    migration tokens: a session can serve its whole round, and the edge server refuses its token after it."""
    cfg = AppConfig.from_run_config({"mode": "split", "edge-servers": 1, "round-timeout": 900})
    with start_edges(cfg) as pool:
        assert _lifetime_s(pool.assign(1, 5, 1).token) == 900
        assert _lifetime_s(pool.migration_token(1, 5, 1, 0)) == 900

    class Recording:
        def start(self, **kwargs):  # type: ignore[no-untyped-def]
            self.kwargs = kwargs
            return "result"

    strategy = Recording()
    assert run_strategy(strategy, None, torch.nn.Linear(2, 2), cfg, None, None, None) == "result"  # type: ignore[arg-type]
    assert strategy.kwargs["timeout"] == 900
