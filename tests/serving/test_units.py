"""Units of the serving package: partitions, failover routes, selection, journal, commands."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from edgeflower.cli import build_parser
from edgeflower.models.zoo import build_model
from edgeflower.serving import Candidate, Journal, Objectives, select
from edgeflower.serving.estimators import DowntimeModel, LatencyModel, out_shapes
from edgeflower.serving.failout import skippable_blocks
from edgeflower.serving.plan import (
    Route,
    Stage,
    balanced_cuts,
    early_exit_route,
    initial_route,
    repartition_route,
    skip_route,
)


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


def _latency_model(**kw) -> LatencyModel:
    from edgeflower.transport.emulation import LinkProfile

    links = {1: LinkProfile(uplink_mbps=80.0, downlink_mbps=80.0, latency_ms=2.0)}
    return LatencyModel([0.004, 0.002, 0.006, 0.008], 0.0, 3136, [4000, 2000, 1000, 40], 10, 32, 0.001, links, **kw)


def test_latency_model_learns_each_nodes_speed_and_overhead_from_relayed_forwards():
    model = _latency_model()
    route = Route("v", (Stage(0, 0, 2), Stage(1, 2, 4)))
    profiled = model.estimate(route)
    assert profiled == pytest.approx(0.001 + 0.006 + 0.001 + 0.014 + model.wire_s(1, 2, 4, False, 32))
    # node 0 runs 3x slower than the profile with 4 ms of RPC overhead; node 1 as profiled with 1.5 ms
    for stage, speed, hop in ((Stage(0, 0, 2), 3.0, 0.004), (Stage(1, 2, 4), 1.0, 0.0015)):
        compute = model.compute_s(stage.start, stage.stop, False, 32) * speed
        wire = model.wire_s(stage.node, stage.start, stage.stop, False, 32)
        for _ in range(5):
            model.observe(stage.node, stage, 32, hop + compute + wire, compute)
    assert model.speed(0) == pytest.approx(3.0) and model.node_hop_s(0) == pytest.approx(0.004)
    # a route the controller never ran (node 0 now holds every block) is estimated with what was learnt
    moved = Route("w", (Stage(0, 0, 4),))
    assert model.estimate(moved) == pytest.approx(0.004 + 3.0 * 0.020 + model.wire_s(0, 0, 4, False, 32))
    assert model.speed(2) == 1.0 and model.node_hop_s(2) == model.hop_s  # never observed


def test_latency_model_ignores_a_contention_burst_and_forgets_old_conditions_and_odd_batches():
    model = _latency_model(window=10)
    stage = Stage(0, 0, 2)
    compute = model.compute_s(0, 2, False, 32)
    for _ in range(8):
        model.observe(0, stage, 32, 0.002 + compute, compute)
    for _ in range(2):  # a burst: 10x slower; trimmed away
        model.observe(0, stage, 32, 0.002 + 10 * compute, 10 * compute)
    assert model.speed(0) == pytest.approx(1.0)
    for _ in range(10):  # the node became 2x slower for good: the window forgets the old speed
        model.observe(0, stage, 32, 0.002 + 2 * compute, 2 * compute)
    assert model.speed(0) == pytest.approx(2.0) and model.node_hop_s(0) == pytest.approx(0.002)
    for _ in range(10):  # far larger batches (an accuracy sweep) do not scale linearly: not learnt from
        model.observe(0, stage, 256, 0.002 + compute, compute)
    assert model.speed(0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="trim"):
        _latency_model(trim=0.5)


def test_latency_model_estimates_at_the_batch_clients_send_calibrated_by_their_own_requests():
    """A route measured at 162 ms on 4-sample requests was estimated at 591 ms (the profiled 32-sample batch, scaled
    linearly): estimates are made at the served batch, calibrated on forwards of that size only."""
    model = _latency_model()
    route = Route("v", (Stage(0, 0, 2), Stage(1, 2, 4)))
    at_32 = model.estimate(route)
    assert model.served_batch() == 32 and not model.calibrated(4)  # before any request: the profiled batch
    model.record_request(4)
    assert model.served_batch() == 32  # requests of 4 seen, but none of their forwards yet: not calibrated at 4
    # the nodes' measured forwards of 4-sample requests: far more than 4/32 of the profile (fixed costs per call)
    measured = {0: (0.050, 0.030), 1: (0.040, 0.025)}  # node -> (stage wall seconds, reported compute seconds)
    for _ in range(6):
        model.record_request(4)
        for stage in route.stages:
            model.observe(stage.node, stage, 4, *measured[stage.node])
    assert model.served_batch() == 4 and model.calibrated(4)
    assert model.estimate(route) == pytest.approx(0.050 + 0.040)  # what the requests took, stage by stage
    assert model.estimate(route, 32) == pytest.approx(at_32)  # the 32-sample class learnt nothing from them
    assert model.batch_class(3) == model.batch_class(4) == model.batch_class(5) == 2 and model.batch_class(1) == 0


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


def test_request_ids_are_scoped_by_client_and_one_in_flight_for_another_input_is_refused_at_once():
    import threading
    from types import SimpleNamespace

    from edgeflower.serving.exactly_once import ExactlyOnce
    from edgeflower.transport.codec import Limits, decode_frame
    from edgeflower.transport.errors import InvalidMessageError

    release, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def run(request_id: str, x: torch.Tensor):  # type: ignore[no-untyped-def]
        ran.append(request_id)
        if len(ran) == 1:  # the first request stays in flight until released
            started.set()
            release.wait(30)
        return x.sum(dim=1, keepdim=True), SimpleNamespace(technique="t", version="v")

    journal = Journal()
    once = ExactlyOnce(journal, run, Limits(), wait_s=30)
    x1, x2 = torch.ones(2, 3), torch.zeros(2, 3)
    first: list[bytes] = []
    thread = threading.Thread(target=lambda: first.append(once.handle("r", x1, client=1)))
    thread.start()
    try:
        assert started.wait(30)
        with pytest.raises(InvalidMessageError, match="for a different input"):
            once.handle("r", x2, client=1)  # refused at once: it would have been answered with x1's logits
        other = decode_frame(once.handle("r", x2, client=2))  # another client's "r" is its own request
        assert torch.equal(other.tensors["logits"], torch.zeros(2, 1)) and other.meta["request_id"] == "r"
    finally:
        release.set()
        thread.join(30)
    assert torch.equal(decode_frame(first[0]).tensors["logits"], torch.full((2, 1), 3.0))
    assert sorted(journal.answers) == ["1/r", "2/r"] and ran == ["r", "r"]


def test_journal_keeps_the_newest_requests_within_its_bounds_and_compacts_its_file(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, max_entries=3, max_reply_bytes=1000)
    for i in range(1200):  # 2400 lines written: over 2 * 3 + 1024, so the file is compacted
        journal.accept(f"1/r{i}", f"sha-{i}")
        journal.answer(f"1/r{i}", b"reply-%d" % i)
    newest = ["1/r1197", "1/r1198", "1/r1199"]
    assert list(journal.accepted) == newest and list(journal.answers) == newest and journal.forgotten == 1197
    journal.accept("1/late", "sha-late")  # accepted, never answered: pending, and forgotten in turn like any other
    assert journal.pending == ["1/late"]
    assert len(path.read_text().splitlines()) <= 2 * 3 + 1024 + 2
    journal.close()
    again = Journal(path, max_entries=3)
    assert list(again.accepted) == ["1/r1198", "1/r1199", "1/late"] and again.answers["1/r1199"] == b"reply-1199"
    again.answer("1/r1", b"too late")  # forgotten while it ran: nothing is remembered for it
    assert "1/r1" not in again.answers
    replies = Journal(max_entries=100, max_reply_bytes=25)  # in memory; bounded in bytes too
    for i in range(5):
        replies.accept(str(i), "sha")
        replies.answer(str(i), b"x" * 10)
    assert list(replies.answers) == ["3", "4"] and list(replies.accepted) == ["3", "4"]


def test_a_full_journal_compacts_rarely_and_an_id_accepted_again_after_it_was_forgotten_starts_afresh(
    tmp_path, monkeypatch
):
    import os

    from edgeflower.serving import journal as journal_module

    rewrites: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(journal_module.os, "replace", lambda a, b: (rewrites.append(str(b)), real_replace(a, b)))
    path = tmp_path / "j.jsonl"
    journal = Journal(path, max_entries=2000)
    for i in range(6000):
        journal.accept(f"1/r{i}", "sha")
        journal.answer(f"1/r{i}", b"reply")
    assert 1 <= len(rewrites) <= 3  # full, it compacts once per 2000 + 512 requests, not once per 512
    journal.accept("1/r0", "sha-new")  # r0 was forgotten long ago: the id is a new request now
    journal.close()
    again = Journal(path, max_entries=2000)
    assert again.pending == ["1/r0"] and again.accepted["1/r0"] == "sha-new" and list(again.accepted)[-1] == "1/r0"
