"""The export ahead of a scheduled move: the source exports a session as its stream ends with an ``end`` frame that
announces the move, while the device finishes its batch; ``Migrate`` sends that state. What can go wrong there
(a stale state, an export that fails or is slow, a move that never comes) loses nothing and holds nothing."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from edgeflower.device.mobility import MoveOrder
from edgeflower.device.pipeline import PipelineTrainer
from edgeflower.device.sessions import EdgeSessions
from edgeflower.edge import migration
from edgeflower.edge.migration import export_session
from edgeflower.edge.server import EdgeServer
from edgeflower.models import build_model
from edgeflower.transport import EdgeClient
from edgeflower.transport.emulation import EmulatedLink, LinkProfile
from tests._edge_helpers import ISSUER, OPTIM, SECRET, count_exports, fashion_batches


@pytest.fixture(scope="module")
def edges():
    with EdgeServer(secret=SECRET, edge_id="ahead-a") as a, EdgeServer(secret=SECRET, edge_id="ahead-b") as b:
        yield a, b


@pytest.fixture(scope="module")
def batches():
    return fashion_batches(num_batches=4, batch_size=32)


def _opened(client: EdgeClient, node: int):  # type: ignore[no-untyped-def]
    """A VGG5 session (``k = 3``) of ``node`` on ahead-a: ``(head, handle)``."""
    torch.manual_seed(0)
    model = build_model("vgg5")
    head, tail = model.split(3)
    return head, client.open_session(ISSUER.issue(3, node, 1, "ahead-a"), model.spec, 3, tail.state_dict(), OPTIM)


def _stepped(client: EdgeClient, batches, node: int):  # type: ignore[no-untyped-def]
    """:func:`_opened`, one step trained and its stream ended with the move announced: the handle."""
    head, session = _opened(client, node)
    x, y = batches[0]
    session.step(head(x).detach(), y, batch=0, batch_size=len(y))
    session.end_stream(then_migrate=True)
    return session


def _move_and_close(client: EdgeClient, session, dest, node: int):  # type: ignore[no-untyped-def]
    """Migrate ``session`` to ``dest`` and close it there: ``(Migrate reply, tail state, metrics)``."""
    good = ISSUER.issue(3, node, 1, dest.edge_id, role="migration")
    reply = client.migrate(session, dest.address, good)
    with EdgeClient(dest.address) as peer:
        state, metrics = peer.resumed(reply.resume, good, 3).close()
    return reply, state, metrics


def test_a_stream_ended_before_a_move_is_exported_as_it_ends_and_the_move_sends_that_state(edges, batches, monkeypatch):
    a, b = edges
    ahead, in_migrate = count_exports(monkeypatch)
    with EdgeClient(a.address) as client:
        session = _stepped(client, batches, 16)
        source = a.registry.get(session.session_id)
        assert source.wait_detached(10) and ahead == [0]  # exported before the stream ended, ahead of any Migrate
        expected = source.state_dict()
        _, state, metrics = _move_and_close(client, session, b, 16)
    assert in_migrate == [] and ahead == [0]  # the move sent the state exported ahead
    assert metrics.batches == 1 and all(torch.equal(state[key], value) for key, value in expected.items())
    assert a.num_sessions == 0 and b.num_sessions == 0


def test_a_session_that_trains_after_its_export_ahead_moves_its_newer_state(edges, batches, monkeypatch):
    a, b = edges
    ahead, in_migrate = count_exports(monkeypatch)
    (x, y), (x2, y2) = batches[0], batches[1]
    with EdgeClient(a.address) as client:
        head, session = _opened(client, 17)
        session.step(head(x).detach(), y, batch=0, batch_size=len(y))
        session.end_stream(then_migrate=True)  # announced, but the device trains one more batch first
        session.step(head(x2).detach(), y2, batch=1, batch_size=len(y2))
        reply, _, metrics = _move_and_close(client, session, b, 17)
    assert reply.resume is not None and reply.resume.last_batch == 1
    assert ahead == [0] and in_migrate == [1]  # the stale state was not sent: Migrate exported the newer one
    assert metrics.batches == 2
    assert a.num_sessions == 0 and b.num_sessions == 0


@pytest.mark.parametrize("m", [1, 4], ids=["split", "pipeline"])
def test_the_export_ahead_starts_only_once_the_last_gradient_has_arrived_on_the_emulated_link(
    edges, batches, m, monkeypatch
):
    a, b = edges
    started: list[float] = []
    real = migration.MigrationHandlers.export_ahead

    def export_ahead(self, session) -> None:  # type: ignore[no-untyped-def]
        started.append(time.perf_counter())  # the clock of the device's emulated link and timeline
        real(self, session)

    monkeypatch.setattr(migration.MigrationHandlers, "export_ahead", export_ahead)
    torch.manual_seed(0)
    model = build_model("vgg5", norm="group")
    order = MoveOrder(2, b.address, ISSUER.issue(3, 18 + m, 1, "ahead-b", role="migration"))
    link = EmulatedLink(LinkProfile(100.0, 100.0, latency_ms=150.0))  # a gradient arrives 150 ms after it leaves
    with EdgeClient(a.address) as client:
        opener = EdgeSessions(client, ISSUER.issue(3, 18 + m, 1, "ahead-a"), model.spec)
        result = PipelineTrainer(model, 3, OPTIM, m, link=link, open_session=opener, move_order=order).train(batches)
    assert not result.fell_back and order.report["migration-bytes"] > 0
    timeline = result.timeline
    arrived = max(iv.end for iv in timeline.intervals if iv.phase == "downlink" and iv.batch == 1)
    assert len(started) == 1 and started[0] >= timeline.origin + arrived  # not before the device has the gradient


def test_an_export_ahead_that_fails_is_logged_and_the_move_exports_the_session_itself(
    edges, batches, monkeypatch, caplog
):
    a, b = edges
    calls: list[str] = []

    def export(s, limits=None):  # type: ignore[no-untyped-def]
        calls.append("export")
        if len(calls) == 1:
            raise MemoryError("no room for the state")  # not a message error: the session must survive it
        return export_session(s, limits)

    monkeypatch.setattr(migration, "export_session", export)
    with EdgeClient(a.address) as client, caplog.at_level(logging.WARNING, logger="flwr"):
        session = _stepped(client, batches, 24)
        assert a.registry.get(session.session_id).wait_detached(10)
        reply, state, metrics = _move_and_close(client, session, b, 24)
    assert calls == ["export", "export"] and reply.state_bytes > 0 and metrics.batches == 1 and state
    assert any(
        "not exported ahead of its move" in r.getMessage() and "MemoryError" in r.getMessage() for r in caplog.records
    )
    assert a.num_sessions == 0 and b.num_sessions == 0


def test_migrate_waits_for_an_export_ahead_that_outlasts_its_wait_for_the_streams_end(edges, batches, monkeypatch):
    a, b = edges
    monkeypatch.setattr(migration, "DETACH_WAIT_S", 0.05)  # far shorter than the export below

    def slow_export(s, limits=None):  # type: ignore[no-untyped-def]
        time.sleep(0.5)  # e.g. a large state: the stream ends only after it
        return export_session(s, limits)

    monkeypatch.setattr(migration, "export_session", slow_export)
    with EdgeClient(a.address) as client:
        session = _stepped(client, batches, 25)
        reply, _, metrics = _move_and_close(client, session, b, 25)  # Migrate goes up at once, during the export
    assert reply.resume is not None and reply.resume.last_batch == 0 and metrics.batches == 1
    assert a.num_sessions == 0 and b.num_sessions == 0


@pytest.mark.parametrize("how", ["end_stream", "detach"])
def test_aborting_a_session_whose_stream_ended_cleanly_closes_it_on_the_edge_server(edges, batches, how):
    a, _ = edges
    with EdgeClient(a.address) as client:
        head, session = _opened(client, 26)
        x, y = batches[0]
        session.step(head(x).detach(), y, batch=0, batch_size=len(y))
        if how == "end_stream":  # a move was announced, then the device failed before asking for it
            session.end_stream(then_migrate=True)
            session.wait_detached()
        else:  # detached for a migration that then failed
            session.detach()
        source = a.registry.get(session.session_id)
        session.abort()
        assert session.session_id not in a.registry.ids()  # not left for the idle reaper, nor its export with it
        assert source.closed and source.take_export() is None
