"""Units of the serving package: partitions, failover routes, selection, journal, commands."""

from __future__ import annotations

import itertools
import json

import pytest

from edgeflower.cli import build_parser
from edgeflower.models.zoo import build_model
from edgeflower.serving import Candidate, Journal, Objectives, select
from edgeflower.serving.estimators import DowntimeModel, out_shapes
from edgeflower.serving.failout import skippable_blocks
from edgeflower.serving.plan import balanced_cuts, early_exit_route, initial_route, repartition_route, skip_route


def test_balanced_cuts_minimise_the_costliest_part_like_brute_force():
    costs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for parts in range(1, 5):
        cuts = balanced_cuts(costs, parts)
        best = min(
            max(sum(costs[a:b]) for a, b in itertools.pairwise((0, *inner, len(costs))))
            for inner in itertools.combinations(range(1, len(costs)), parts - 1)
        )
        assert max(sum(costs[a:b]) for a, b in itertools.pairwise(cuts)) == best
        assert cuts[0] == 0 and cuts[-1] == len(costs) and len(cuts) == parts + 1


def test_failover_routes_of_each_technique():
    resnet = build_model("resnet18", width=8)
    shapes = out_shapes(resnet)
    assert skippable_blocks(resnet) == [1, 2, 4, 6, 8]  # within-stage BasicBlocks, not the downsampling ones
    route = initial_route((0, 2, 3, 6, 10))
    ee = early_exit_route(route, 1, exits=[2, 3, 6])
    assert ee is not None and ee.describe() == [[0, 0, 2, True]]
    assert early_exit_route(route, 0, exits=[2, 3, 6]) is None  # nothing before the first node
    sk = skip_route(route, 1, shapes, resnet.spec.in_shape)
    assert sk is not None and sk.nodes() == [0, 2, 3]
    assert skip_route(route, 2, shapes, resnet.spec.in_shape) is None  # layer2.0 downsamples
    rep = repartition_route([1.0] * 10, [0, 2, 3])
    assert rep.nodes() == [0, 2, 3] and rep.cuts[-1] == 10 and rep.version != route.version
    vgg = build_model("vgg5")
    assert skippable_blocks(vgg) == [4]  # conv3: 64 -> 64 channels at 7x7


def test_selection_respects_thresholds_then_priorities():
    a = Candidate("repartition", 0.90, 0.020, 0.50)
    b = Candidate("early_exit", 0.80, 0.005, 0.0001)
    c = Candidate("skip", 0.88, 0.018, 0.0001)
    assert select([a, b, c], Objectives()).chosen is a
    assert select([a, b, c], Objectives(max_downtime_s=0.1)).chosen is c
    assert select([a, b, c], Objectives(priority=("latency", "accuracy", "downtime"))).chosen is b
    assert select([a, b, c], Objectives(min_accuracy=0.85, max_latency_s=0.019)).chosen is c
    tie = Objectives(priority=("accuracy", "latency", "downtime"), tolerance=(0.05, 0.0))
    assert select([a, b, c], tie).chosen is c  # within 5 points of the best, then the faster
    sel = select([a, b, c], Objectives(min_accuracy=0.95))
    assert not sel.meets_objectives and sel.chosen is a  # violates accuracy least
    with pytest.raises(ValueError, match="priority"):
        Objectives(priority=("accuracy",))
    with pytest.raises(ValueError, match="unknown objectives"):
        Objectives.from_dict({"max_latency": 3})


def test_downtime_model_fits_deploy_samples():
    model = DowntimeModel()
    model.calibrate([(1000, 0.011), (3000, 0.013), (5000, 0.015)])
    assert model.fixed_s == pytest.approx(0.010) and model.per_byte_s == pytest.approx(1e-6)
    assert model.estimate({0: 2000, 1: 2000}) == pytest.approx(model.switch_s + 2 * 0.012)


def test_journal_replays_answers_and_reports_pending_after_a_torn_write(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.accept("a", "sha-a")
    journal.answer("a", b"reply-a")
    journal.accept("b", "sha-b")
    journal.close()
    with path.open("a") as f:
        f.write('{"e": "answered", "id": "b", "rep')  # the crash hit mid-line
    again = Journal(path)
    assert again.answers == {"a": b"reply-a"} and again.pending == ["b"]
    assert again.accepted["b"] == "sha-b"
    again.answer("b", b"reply-b")
    again.close()
    assert Journal(path).answers == {"a": b"reply-a", "b": b"reply-b"}  # not glued onto the torn line
    assert all(json.loads(line)["e"] for line in path.read_text().splitlines()[:3])


def test_serving_commands_are_registered():
    parser = build_parser()
    for argv in (
        ["serve", "--config", "c.json"],
        ["infer-node", "--secret-file", "s"],
        ["serve-bundle", "--checkpoint", "m.pt", "--cuts", "0,2,7", "--out", "b"],
    ):
        assert callable(parser.parse_args(argv).func)
