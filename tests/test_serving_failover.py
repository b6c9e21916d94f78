"""Failover of a partitioned ResNet-18: no request lost, the technique the objectives demand, estimators in bounds."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter

import pytest
import torch

from edgeflower.clients.local import make_optimizer
from edgeflower.data import BatchLoader
from edgeflower.models.zoo import build_model
from edgeflower.serving import (
    Controller,
    ControllerConfig,
    InferenceNode,
    Journal,
    Objectives,
    ServingClient,
    build_bundle,
    failout_train,
    select,
)
from edgeflower.serving.plan import Route
from edgeflower.transport.emulation import LinkProfile
from tests._serving_helpers import SECRET, client_token, split_data, start_node

CUTS = (0, 2, 3, 6, 10)  # node 1 holds layer1.1 only: skippable, with an exit head before it
FAILED = 1


@pytest.fixture(scope="module")
def resnet(fmnist_train, fmnist_test):
    """ResNet-18 (width 8) failout-trained for 150 batches, its bundle, and held-out test data."""
    torch.manual_seed(0)
    model = build_model("resnet18", width=8)
    opt = make_optimizer(model.parameters(), 0.03, 0.9)
    failout_train(model, BatchLoader(fmnist_train, 64, seed=0, max_batches=150), opt, blocks=[2], p=0.3)
    model.eval()
    _, val, test = split_data(fmnist_test, 0, 2000, 2000)
    exit_data = fmnist_train.subset(torch.arange(50000, 54000))
    return build_bundle(model, CUTS, exit_data, val, batch_size=32), test


def _nodes(n: int) -> list[InferenceNode]:
    nodes = []
    for _ in range(n):
        node = InferenceNode(secret=SECRET)
        node.start()
        nodes.append(node)
    return nodes


class Load:
    """Client threads sending requests with unique ids until stopped; records every answer by id."""

    def __init__(self, address: str, x: torch.Tensor, threads: int = 2) -> None:
        self.x = x
        self.answers: dict[str, list] = {}
        self.errors: list[BaseException] = []
        self.sent: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(address, t), daemon=True) for t in range(threads)]

    def _loop(self, address: str, t: int) -> None:
        with ServingClient(address, client_token(t), deadline_s=30) as client:
            i = 0
            while not self._stop.is_set():
                rid = f"t{t}-{i}"
                with self._lock:
                    self.sent.append(rid)
                try:
                    p = client.predict(self.x, rid)
                except BaseException as exc:  # recorded and asserted on by the test
                    self.errors.append(exc)
                    return
                with self._lock:
                    self.answers.setdefault(rid, []).append(p)
                i += 1

    def __enter__(self) -> Load:
        for th in self._threads:
            th.start()
        return self

    def wait_answers(self, n: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < n and time.monotonic() < deadline and not self.errors:
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(60)


def _assert_exactly_once(load: Load, journal_path) -> None:
    assert not load.errors, load.errors
    assert sorted(load.sent) == sorted(load.answers), "a sent request got no answer"
    assert all(len(v) == 1 for v in load.answers.values())
    answered = Counter(json.loads(line)["id"] for line in journal_path.read_text().splitlines() if '"answered"' in line)
    assert set(answered) == set(load.sent) and max(answered.values()) == 1


def _candidates(bundle):
    nodes = _nodes(4)
    try:
        with Controller(bundle, [n.address for n in nodes], SECRET) as ctl:
            return {c.technique: c for c, _ in ctl.candidates(FAILED)}
    finally:
        for n in nodes:
            n.stop()


def _cases(cands) -> dict[str, Objectives]:
    fast = cands["repartition"].downtime_s / 2  # excludes the redeployment
    return {
        "repartition": Objectives(),  # accuracy first, any downtime
        "skip": Objectives(max_downtime_s=fast),  # accuracy first, no time to redeploy
        "early_exit": Objectives(max_downtime_s=fast, priority=("latency", "accuracy", "downtime")),
    }


def test_each_technique_wins_when_the_objectives_demand_it(resnet):
    bundle, _ = resnet
    cands = _candidates(bundle)
    assert set(cands) == {"repartition", "early_exit", "skip"}
    # the premises the cases rely on: full model > skipped block > early exit in accuracy, exit fastest
    assert cands["repartition"].accuracy > cands["skip"].accuracy > cands["early_exit"].accuracy
    assert cands["early_exit"].latency_s < min(cands["skip"].latency_s, cands["repartition"].latency_s)
    assert cands["early_exit"].downtime_s < cands["repartition"].downtime_s
    for technique, objectives in _cases(cands).items():
        sel = select(list(cands.values()), objectives)
        assert sel.chosen.technique == technique and sel.meets_objectives
        assert sel.seconds >= 0  # its time (CONTINUER: 16.82 ms) is reported by the failover benchmark
    impossible = Objectives(min_accuracy=0.99, max_downtime_s=1e-9)
    sel = select(list(cands.values()), impossible)
    assert not sel.meets_objectives and sel.chosen.technique in cands


@pytest.mark.parametrize("technique", ["early_exit", "skip"])
def test_node_failure_under_load_switches_route_without_losing_requests(resnet, technique, tmp_path):
    bundle, test = resnet
    cands = _candidates(bundle)
    nodes = _nodes(4)
    x = test.x[:32]
    try:
        journal = Journal(tmp_path / "journal.jsonl")
        config = ControllerConfig(heartbeat_s=0.05)
        with Controller(
            bundle, [n.address for n in nodes], SECRET, _cases(cands)[technique], journal=journal, config=config
        ) as ctl:
            with Load(ctl.address, x) as load:
                load.wait_answers(10)
                nodes[FAILED].stop()
                load.wait_answers(len(load.answers) + 20)
            assert [e.technique for e in ctl.events] == [technique]
            assert ctl.route.technique == technique and FAILED not in ctl.route.nodes()
        _assert_exactly_once(load, tmp_path / "journal.jsonl")
        # answers on the new route are what that route computes locally
        model, late = bundle.model, [p for v in load.answers.values() for p in v if p.technique == technique]
        assert late
        with torch.no_grad():
            if technique == "early_exit":
                want = bundle.exits[CUTS[FAILED]](model.segment(0, CUTS[FAILED], share=True)(x))
            else:
                h = model.segment(0, CUTS[FAILED], share=True)(x)
                want = model.segment(CUTS[FAILED + 1], model.num_blocks, share=True)(h)
        assert torch.allclose(late[0].logits, want, atol=1e-4)
    finally:
        for n in nodes:
            n.stop()


def test_killed_node_process_under_load_loses_no_request_and_repartitions(resnet, tmp_path):
    bundle, test = resnet
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    procs = []
    try:
        procs = [start_node(secret_file) for _ in range(4)]
        journal = Journal(tmp_path / "journal.jsonl")
        config = ControllerConfig(heartbeat_s=0.1)
        with Controller(
            bundle, [p.address for p in procs], SECRET, Objectives(), journal=journal, config=config
        ) as ctl:
            with Load(ctl.address, test.x[:32], threads=3) as load:
                load.wait_answers(15)
                procs[FAILED].sigkill()
                load.wait_answers(len(load.answers) + 30)
            assert [e.technique for e in ctl.events] == ["repartition"]
            assert FAILED not in ctl.route.nodes() and len(ctl.route.stages) == 3
            assert ctl.executed == len(load.sent)
        _assert_exactly_once(load, tmp_path / "journal.jsonl")
        with torch.no_grad():
            want = bundle.model(test.x[:32])
        for preds in load.answers.values():
            assert torch.allclose(preds[0].logits, want, atol=1e-4)
    finally:
        for p in procs:
            p.kill()


def _measure(ctl: Controller, route: Route, test, batch: int = 200) -> tuple[float, float]:
    """Accuracy of ``route`` on ``test`` and the median latency of one serving batch through it."""
    correct = 0
    for i in range(0, len(test), batch):
        logits = ctl._run_route(route, f"acc-{i}", test.x[i : i + batch])
        correct += int((logits.argmax(1) == test.y[i : i + batch]).sum())
    x = test.x[: ctl.bundle.batch_size]
    times = []
    for i in range(15):
        t0 = time.perf_counter()
        ctl._run_route(route, f"lat-{i}", x)
        times.append(time.perf_counter() - t0)
    return correct / len(test), statistics.median(times)


def test_estimators_match_measurements_within_stated_bounds(resnet):
    """Accuracy within 3 points (2000 validation vs 2000 test samples), latency within 1.5x, downtime within 4x.

    Every node sits behind an emulated 1 Gbit/s link with 10 ms latency, so most of a route's latency is the
    transfers the estimator models from activation bytes and the link; the compute part is estimated from the
    three calibration requests of the controller's start-up only. Without the links a 4 ms route measured on two
    shared cores made the bound a timing test; the failover benchmark reports the compute-only errors (under load,
    with the estimates learnt from the load's requests)."""
    bundle, test = resnet
    nodes = _nodes(4)
    links = {i: LinkProfile(1000.0, 1000.0, latency_ms=10) for i in range(len(nodes))}
    try:
        with Controller(bundle, [n.address for n in nodes], SECRET, links=links) as ctl:
            options = ctl.candidates(FAILED)
            for cand, route in options:
                if cand.technique == "repartition":
                    continue  # measured below, after really redeploying
                acc, lat = _measure(ctl, route, test)
                assert abs(cand.accuracy - acc) <= 0.03, (cand, acc)
                assert 1 / 1.5 <= cand.latency_s / lat <= 1.5, (cand, lat)
            nodes[FAILED].stop()
            event = ctl.fail_over(FAILED, "test")
            assert event is not None and event.technique == "repartition"
            est = next(c for c, _ in options if c.technique == "repartition")
            acc, lat = _measure(ctl, ctl.route, test)
            assert abs(est.accuracy - acc) <= 0.03
            assert 1 / 1.5 <= est.latency_s / lat <= 1.5, (est, lat)
            assert est.downtime_s / 4 <= event.downtime_s <= est.downtime_s * 4, (est, event.downtime_s)
    finally:
        for n in nodes:
            n.stop()
