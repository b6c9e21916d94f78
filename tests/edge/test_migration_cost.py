"""What a migration charges the device: the edge-to-edge wire once, the destination's import after it, no extra
round trip; and what it no longer repeats (the model size check per spec)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import edgeflower.edge.migration as migration
import edgeflower.edge.session_state as session_state
from edgeflower.device.mobility import MoveOrder, migrate_session
from edgeflower.edge.migration import check_size_once
from edgeflower.edge.server import EdgeServer, EdgeServerConfig
from edgeflower.edge.tail_pool import TAILS, TailPool
from edgeflower.models import build_model
from edgeflower.transport import EdgeClient, InvalidMessageError
from edgeflower.transport.codec import decode_frame
from edgeflower.transport.messages import DPParams, StepRequest
from edgeflower.transport.migration import ImportReply, MigrateReply, ResumeReply
from tests._clock import ManualClock
from tests._edge_helpers import ISSUER, OPTIM, SECRET, fashion_batches, training_session

PEER_MBPS = 1.0  # the small model's state (about 0.2 MB) takes about 1.6 s on this modelled wire


@pytest.fixture(scope="module")
def edges():
    config = EdgeServerConfig(peer_link_mbps=PEER_MBPS)
    with EdgeServer(secret=SECRET, edge_id="a", config=config) as a, EdgeServer(secret=SECRET, edge_id="b") as b:
        yield a, b


def _detached_session(client: EdgeClient, node: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("vgg5", width=0.25)
    head, tail = model.split(3)
    ((x, y),) = fashion_batches(1, 16)
    session = client.open_session(ISSUER.issue(7, node, 1, "a"), model.spec, 3, tail.state_dict(), OPTIM)
    session.step(head(x).detach(), y, batch=0, batch_size=len(y))
    session.detach()
    return session, model.spec


@pytest.mark.parametrize(
    ("import_s", "charged_import_s"),
    [(0.25, 0.25), (50.0, 1.0)],
    ids=["destination-import-charged-after-the-wire", "a-peer-cannot-stretch-the-charge-past-the-real-call"],
)
def test_edge_to_edge_link_charges_the_wire_once_and_the_destinations_import_after_it(
    edges, monkeypatch, import_s, charged_import_s
):
    a, b = edges
    clock = ManualClock()
    monkeypatch.setattr(a.migration, "clock", clock)
    real_call_s = 1.0  # the real transfer and import, as the manual clock sees them

    class Reply(ImportReply):
        @classmethod
        def from_frame(cls, frame):  # type: ignore[no-untyped-def]
            clock.sleep(real_call_s)
            return dataclasses.replace(ImportReply.from_frame(frame), import_s=import_s)

    monkeypatch.setattr(migration, "ImportReply", Reply)
    node = 40 + int(import_s)
    with EdgeClient(a.address) as client:
        session, spec = _detached_session(client, node)
        start = clock.now()
        reply = client.migrate(session, b.address, ISSUER.issue(7, node, 1, "b", role="migration"), spec)
    # the case this test is about: the modelled wire is the longer one (more bytes than the link carries meanwhile)
    carried_during_the_call = int(real_call_s * PEER_MBPS * 1e6 / 8)  # bytes
    assert reply.state_bytes > carried_during_the_call
    wire_s = reply.state_bytes * 8 / (PEER_MBPS * 1e6)
    # The real transfer overlapped the modelled wire (not added to it); the import is charged after the arrival.
    assert clock.now() - start == pytest.approx(wire_s + charged_import_s)
    assert sum(clock.sleeps) == pytest.approx(wire_s + charged_import_s)
    assert reply.resume is not None and reply.resume.session_id == reply.session_id
    with EdgeClient(b.address) as dest:
        dest.resumed(reply.resume, ISSUER.issue(7, node, 1, "b", role="migration"), 3).abort()


def test_import_and_migrate_replies_relay_the_destinations_description_and_refuse_bad_seconds():
    resume = ResumeReply("s1", "b", (16, 7, 7), True, 4)
    imported = ImportReply.from_frame(decode_frame(ImportReply("s1", "b", 0.01, resume).to_bytes()))
    assert imported == ImportReply("s1", "b", 0.01, resume)
    migrated = MigrateReply.from_frame(decode_frame(MigrateReply("s1", "b", 123, 0.1, 0.2, resume).to_bytes()))
    assert migrated.resume == resume and migrated.state_bytes == 123
    old = MigrateReply.from_frame(decode_frame(MigrateReply("s1", "b", 123, 0.1, 0.2).to_bytes()))
    assert old.resume is None  # nothing relayed: the device asks the destination (Resume)
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        frame = decode_frame(dataclasses.replace(imported, import_s=bad).to_bytes())  # type: ignore[arg-type]
        with pytest.raises(InvalidMessageError, match="import_s"):
            ImportReply.from_frame(frame)


class _Source:
    address = "source:1"

    def __init__(self, resume: ResumeReply | None) -> None:
        self.reply = MigrateReply("s9", "b", 1000, 0.0, 0.0, resume)
        self.closed = False

    def migrate(self, session, destination, token, expect_model=None):  # type: ignore[no-untyped-def]
        return self.reply

    def close(self) -> None:
        self.closed = True


class _Destination:
    address = "dest:1"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def health(self, timeout_s: float = 5.0) -> None:
        self.calls.append("health")

    def resumed(self, reply, token, split_point):  # type: ignore[no-untyped-def]
        self.calls.append("resumed")
        return _Handle(self, reply.last_batch)

    def resume(self, token, split_point):  # type: ignore[no-untyped-def]
        self.calls.append("resume")
        return _Handle(self, 2)

    def close(self) -> None:
        self.calls.append("close")


@dataclasses.dataclass
class _Handle:
    client: object
    last_batch: int = -1
    split_point: int = 3
    owns_client: bool = False


@pytest.mark.parametrize("relayed", [True, False], ids=["relayed-no-resume-call", "not-relayed-resume-call"])
def test_device_continues_on_the_relayed_session_and_asks_the_destination_only_without_it(relayed):
    dest = _Destination()
    source = _Source(ResumeReply("s9", "b", (16, 7, 7), True, 2) if relayed else None)
    order = MoveOrder(3, dest.address, "migration-token", connect=lambda address: dest)  # type: ignore[arg-type,return-value]
    handle = migrate_session(_Handle(source), order, None)  # type: ignore[arg-type]
    assert handle.client is dest and handle.owns_client and handle.last_batch == 2
    rpcs = [c for c in dest.calls if c != "health"]  # the channel warm-up runs on its own thread
    assert rpcs == (["resumed"] if relayed else ["resume"])
    assert order.report["migration-bytes"] == 1000 and order.report["migration-resumed"] == 0


class _Connector:
    """``MoveOrder.connect``: records the destination clients it makes."""

    def __init__(self) -> None:
        self.made: list[_Destination] = []

    def __call__(self, address: str) -> _Destination:
        self.made.append(_Destination())
        return self.made[-1]


def test_a_scheduled_move_connects_a_batch_ahead_and_moves_over_that_channel():
    connect = _Connector()
    order = MoveOrder(3, "dest:1", "migration-token", connect=connect)  # type: ignore[arg-type]
    assert not order.due(1) and not connect.made  # two batches ahead: nothing yet
    assert not order.due(2) and len(connect.made) == 1  # the batch ahead: connecting (Health, on its own thread)
    assert order.due(3)
    source = _Source(ResumeReply("s9", "b", (16, 7, 7), True, 2))
    handle = migrate_session(_Handle(source), order, None)  # type: ignore[arg-type]
    assert handle.client is connect.made[0] and len(connect.made) == 1  # the prepared channel, no second one
    order.release()  # the trainer's end of pass
    assert "close" not in connect.made[0].calls  # it belongs to the moved session now


def test_a_channel_prepared_for_a_move_the_round_does_not_reach_is_closed_and_a_restart_prepares_none():
    connect = _Connector()
    order = MoveOrder(4, "dest:1", "migration-token", connect=connect)  # type: ignore[arg-type]
    assert not order.due(3)
    order.release()  # the round ended before batch 4
    assert "close" in connect.made[0].calls
    restart = MoveOrder(4, "dest:1", "migration-token", "restart", connect=connect)  # type: ignore[arg-type]
    assert not restart.due(3) and len(connect.made) == 1  # a restart reopens through the trainer's sessions


def test_size_check_builds_each_spec_once_and_still_refuses_oversized_models(monkeypatch):
    built = []
    real = session_state.check_model_size

    def counting(spec, max_params):  # type: ignore[no-untyped-def]
        built.append(spec)
        return real(spec, max_params)

    monkeypatch.setattr(session_state, "check_model_size", counting)
    monkeypatch.setattr(session_state, "_sizes", {})
    spec = build_model("vgg5", width=0.25).spec
    for _ in range(3):
        check_size_once(spec, 10_000_000)
    assert len(built) == 1  # built on the meta device once, then remembered
    for _ in range(2):  # over the limit: refused every time (and never remembered as fitting)
        with pytest.raises(InvalidMessageError, match="limit"):
            check_size_once(spec, 1000)
    assert len(built) == 3
    check_size_once(spec, None)  # no limit: nothing to check
    assert len(built) == 3


def test_sessions_of_one_model_get_their_own_copy_of_the_built_tail():
    from edgeflower.edge.session import _build_tail
    from edgeflower.transport.messages import OpenRequest

    model = build_model("vgg5", width=0.25)
    state = {k: v.clone() for k, v in model.split(3)[1].state_dict().items()}
    request = OpenRequest("t", model.spec, 3, OPTIM, state)
    first, shape = _build_tail(request)
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)  # training one session must not touch the next one's tail
    second, shape2 = _build_tail(request)
    assert shape2 == shape == (16, 14, 14)  # after conv1, pool1, conv2 at width 0.25
    got = second.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    firsts = {p.data_ptr() for p in first.parameters()}
    assert not firsts & {p.data_ptr() for p in second.parameters()}


def test_the_next_session_of_a_model_takes_an_ended_sessions_tail_and_keeps_nothing_of_it():
    model = build_model("vgg5", width=0.25)
    first_state = {k: v.clone() for k, v in model.split(3)[1].state_dict().items()}
    TAILS._spares.pop(TailPool.key(model.spec, 3), None)  # spares left by earlier tests in this process
    first = training_session(model, 3, first_state)
    x, y = fashion_batches(1, 8)[0]
    with torch.no_grad():
        act = model.split(3)[0](x)
    first.step(StepRequest(act, y, 0, batch_size=len(y)))  # trains: weights, BN buffers and gradients change
    reused = first.tail
    first.release()
    second_state = {k: (v + 0.5) if v.is_floating_point() else v + 3 for k, v in first_state.items()}
    second = training_session(model, 3, second_state)
    assert second.tail is reused  # no copy, no build
    got = second.tail.state_dict()
    assert all(torch.equal(got[k], v) for k, v in second_state.items())  # every parameter and buffer is its own
    assert all(p.grad is None for p in second.tail.parameters()) and second.tail.training
    third = training_session(model, 3, first_state)  # the spare is taken: a copy of the template
    assert third.tail is not reused
    assert not {p.data_ptr() for p in third.tail.parameters()} & {p.data_ptr() for p in reused.parameters()}


def test_two_ended_sessions_tails_serve_the_next_two_sessions_and_a_third_is_not_kept():
    model = build_model("vgg5", width=0.25)
    key = TailPool.key(model.spec, 3)
    state = {k: v.clone() for k, v in model.split(3)[1].state_dict().items()}
    TAILS._spares.pop(key, None)  # spares left by earlier tests in this process
    ended = [training_session(model, 3, state) for _ in range(3)]
    tails = [s.tail for s in ended]
    for session in ended:
        session.release()  # the third finds both places taken: it is dropped, not kept
    assert len(TAILS._spares[key]) == 2
    exporter = training_session(model, 3, state)  # e.g. the source of a move, still holding its session
    importer = training_session(model, 3, state)  # and the destination's import in the same process
    assert {id(exporter.tail), id(importer.tail)} == {id(tails[0]), id(tails[1])}
    assert training_session(model, 3, state).tail not in tails  # no spare left: a copy of the template


def test_a_dp_sessions_tail_is_never_given_to_another_session():
    model = build_model("vgg5", width=0.25, norm="group")
    state = {k: v.clone() for k, v in model.split(3)[1].state_dict().items()}
    private = training_session(model, 3, state, dp=DPParams(1.0, 1.0, 8, 0.01, 1e-5))
    tail = private.tail
    private.release()
    assert training_session(model, 3, state).tail is not tail
