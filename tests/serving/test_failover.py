"""Failover of a partitioned ResNet-18: no request lost, the technique the objectives demand, accuracy estimates in
bounds."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter

import pytest
import torch

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
from edgeflower.serving.exactly_once import journal_key
from edgeflower.serving.plan import Route
from edgeflower.serving.selection import Candidate
from edgeflower.training import make_optimizer
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
    sent = {journal_key(int(rid[1 : rid.index("-")]), rid) for rid in load.sent}  # thread t sends as client t
    assert set(answered) == sent and max(answered.values()) == 1


def _candidates(bundle):
    nodes = _nodes(4)
    try:
        with Controller(bundle, [n.address for n in nodes], SECRET) as ctl:
            return {c.technique: c for c, _ in ctl.candidates(FAILED)}
    finally:
        for n in nodes:
            n.stop()


# Estimates fixed by construction for the decisions under test, in the order failout training gives them on
# average (the whole model is the most accurate, skipping a failout-trained block costs a little, an early exit
# more; an early exit is fastest and nothing but a redeployment takes long). The measured table of a run varies
# by about a point between machines (150 SGD steps summed with other thread counts) and skip and the whole model
# are within that of each other, so a test that took its order from a measurement decided on the machine.
FIXED = {
    "repartition": Candidate("repartition", 0.86, 0.030, 0.400),
    "skip": Candidate("skip", 0.82, 0.025, 0.001),
    "early_exit": Candidate("early_exit", 0.70, 0.010, 0.001),
}


def _pinned_accuracy(bundle):
    """The bundle with the accuracy table of :data:`FIXED` for node :data:`FAILED` (model and exits unchanged)."""
    table = {
        **bundle.accuracy,
        "full": FIXED["repartition"].accuracy,
        f"skip:{FAILED}": FIXED["skip"].accuracy,
        f"early_exit:{FAILED}": FIXED["early_exit"].accuracy,
    }
    return dataclasses.replace(bundle, accuracy=table)


def _cases(cands) -> dict[str, Objectives]:
    fast = cands["repartition"].downtime_s / 2  # excludes the redeployment
    return {
        "repartition": Objectives(),  # accuracy first, any downtime
        "skip": Objectives(max_downtime_s=fast),  # accuracy first, no time to redeploy
        "early_exit": Objectives(max_downtime_s=fast, priority=("latency", "accuracy", "downtime")),
    }


def test_each_technique_wins_when_the_objectives_demand_it(resnet):
    bundle, _ = resnet
    assert set(_candidates(bundle)) == {"repartition", "early_exit", "skip"}  # the controller offers all three
    cands = FIXED
    for technique, objectives in _cases(cands).items():
        sel = select(list(cands.values()), objectives)
        assert sel.chosen.technique == technique and sel.meets_objectives
        assert sel.seconds >= 0  # its time (CONTINUER: 16.82 ms) is reported by the failover benchmark
    impossible = Objectives(min_accuracy=0.99, max_downtime_s=1e-9)
    sel = select(list(cands.values()), impossible)
    assert not sel.meets_objectives and sel.chosen.technique in cands


def _busy_machine_config(heartbeat_s: float) -> ControllerConfig:
    """Generous deadlines, so that on a machine busy with other work only the stopped or killed node misses its
    heartbeats and no deploy or forward times out: a node that is gone refuses the connection at once, whatever the
    deadline (a make test under a load of 13 on 2 cores timed a deploy out at the default 30 s)."""
    return ControllerConfig(heartbeat_s=heartbeat_s, heartbeat_timeout_s=10.0, forward_timeout_s=120.0)


@pytest.mark.parametrize("technique", ["early_exit", "skip"])
def test_node_failure_under_load_switches_route_without_losing_requests(resnet, technique, tmp_path):
    bundle, test = resnet
    nodes = _nodes(4)
    x = test.x[:32]
    try:
        journal = Journal(tmp_path / "journal.jsonl")
        config = _busy_machine_config(heartbeat_s=0.05)
        with Controller(bundle, [n.address for n in nodes], SECRET, journal=journal, config=config) as ctl:
            ctl.pinned = technique  # which technique the objectives pick is decided above, on fixed estimates
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
        config = _busy_machine_config(heartbeat_s=0.1)
        # accuracy first (Objectives()) on the fixed accuracy table: repartitioning keeps the whole model
        with Controller(
            _pinned_accuracy(bundle), [p.address for p in procs], SECRET, Objectives(), journal=journal, config=config
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


def _accuracy(ctl: Controller, route: Route, test, batch: int = 200) -> float:
    """Accuracy of ``route`` on ``test``, served through the controller's nodes."""
    correct = 0
    for i in range(0, len(test), batch):
        logits = ctl.run_route(route, f"acc-{i}", test.x[i : i + batch])
        correct += int((logits.argmax(1) == test.y[i : i + batch]).sum())
    return correct / len(test)


def test_accuracy_estimates_match_the_served_routes_within_sampling_error(resnet):
    """Each option's accuracy estimate (2000 validation samples) within 4 points of its served accuracy on 2000
    other test samples: at about 80 % accuracy the difference of two independent 2000-sample estimates has a
    standard deviation of sqrt(2 * 0.8 * 0.2 / 2000) = 1.3 points, so 4 points is three of them.

    The latency and downtime estimates are measured against the real routes by the failover benchmark
    (``latency_estimation_error``, ``downtime_estimation_error``), not asserted here: they are times."""
    bundle, test = resnet
    nodes = _nodes(4)
    try:
        with Controller(bundle, [n.address for n in nodes], SECRET) as ctl:
            options = ctl.candidates(FAILED)
            for cand, route in options:
                if cand.technique == "repartition":
                    continue  # measured below, after really redeploying
                assert abs(cand.accuracy - _accuracy(ctl, route, test)) <= 0.04, cand
            nodes[FAILED].stop()
            ctl.pinned = "repartition"
            event = ctl.fail_over(FAILED, "test")
            assert event is not None and event.technique == "repartition"
            est = next(c for c, _ in options if c.technique == "repartition")
            assert abs(est.accuracy - _accuracy(ctl, ctl.route, test)) <= 0.04
    finally:
        for n in nodes:
            n.stop()
