"""The ServerApp's planner for each run config builds and plans without a Flower run."""

from __future__ import annotations

import pytest

from edgeflower.app.server_app import make_run_planner, planner_kind
from edgeflower.config import AppConfig
from edgeflower.models import build_model


@pytest.mark.parametrize(
    ("run_config", "kind", "split_point"),
    [
        ({}, "fixed", 7),  # classic FL: the fixed planner offloads nothing
        ({"mode": "split", "split-point": 3}, "fixed", 3),
        ({"mode": "split", "planner": "exact"}, "exact", 7),  # unobserved nodes: classic FL first
        ({"mode": "pipeline", "norm": "group", "split-point": 2, "microbatches": 2}, "pipar", 2),
    ],
)
def test_the_run_planner_of_each_mode_plans_every_node_of_a_round(run_config, kind, split_point):
    """Built as the ServerApp builds it (the fixed planner too: its cost model needs a measured profile, which a
    FLOP-only profile lacked, failing every ``fixed`` run at the ServerApp's start)."""
    cfg = AppConfig.from_run_config({"model-width": 0.25, "batch-size": 8, **run_config})
    model = build_model("vgg5", width=0.25, norm=cfg.norm)
    planner = make_run_planner(cfg, model)
    assert planner_kind(cfg) == kind
    plans = planner.plan(1, [11, 12])
    assert sorted(plans) == [11, 12]
    assert {p.split_point for p in plans.values()} == {split_point}
