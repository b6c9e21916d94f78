"""Sessions are cleaned up on close, disconnect, timeout and server stop; no threads or tails are left behind."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch

from edgeflower.edge import EdgeServer, EdgeServerConfig, TrainingSession
from edgeflower.transport import EdgeClient, EdgeUnavailableError, SessionNotFoundError
from tests._edge_helpers import OPTIM, SECRET, fashion_batches, fresh_model, thread_names, token, wait_until


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_batches(num_batches=1, batch_size=8)[0]


def _live_sessions() -> int:
    gc.collect()
    return sum(type(o) is TrainingSession for o in gc.get_objects())


def _open_and_step(client: EdgeClient, batch, node: int = 1, steps: int = 1):
    model = fresh_model("vgg5")
    head, tail = model.split(2)
    session = client.open_session(token(node), model.spec, 2, tail.state_dict(), OPTIM)
    x, y = batch
    for b in range(steps):
        session.step(head(x).detach(), y, batch=b)
    return session, head


def test_close_removes_the_session_and_frees_its_tail(batch) -> None:
    with EdgeServer(secret=SECRET) as server, EdgeClient(server.address) as client:
        session, _ = _open_and_step(client, batch)
        assert server.num_sessions == 1
        session.close()
        assert server.num_sessions == 0
        assert wait_until(lambda: _live_sessions() == 0)


@pytest.mark.parametrize("then", ["step", "close"])
def test_a_stream_ended_and_waited_for_leaves_the_session_usable_for_a_new_stream_or_close(batch, then) -> None:
    """``end_stream()`` + ``wait_detached()`` (a move that did not happen): the next step starts a new stream and
    ``close()`` closes at once; both waited for the ended stream's reply until their timeout before."""
    with EdgeServer(secret=SECRET) as server, EdgeClient(server.address, timeout_s=20) as client:
        session, head = _open_and_step(client, batch)
        session.end_stream()
        session.wait_detached()
        if then == "step":
            session.step(head(batch[0]).detach(), batch[1], batch=1)
        state, metrics = session.close()
        assert metrics.batches == (2 if then == "step" else 1) and state
        assert server.num_sessions == 0


def test_disconnect_mid_stream_drops_the_session(batch) -> None:
    with EdgeServer(secret=SECRET) as server:
        client = EdgeClient(server.address)
        session, head = _open_and_step(client, batch)
        session.send(head(batch[0]).detach(), batch[1], batch=1)
        client.close()  # the device vanishes with a step in flight
        assert wait_until(lambda: server.num_sessions == 0)
        assert wait_until(lambda: _live_sessions() == 0)


def test_cancelled_stream_drops_the_session(batch) -> None:
    with EdgeServer(secret=SECRET) as server, EdgeClient(server.address) as client:
        session, _ = _open_and_step(client, batch)
        session.abort()
        assert wait_until(lambda: server.num_sessions == 0)
        with pytest.raises(SessionNotFoundError):
            client.call("/edgeflower.Offload/Close", _close_frame(session))


def _close_frame(session) -> bytes:
    from edgeflower.transport.messages import CloseRequest

    return CloseRequest(session.session_id, session.token).to_bytes()


def test_idle_sessions_time_out(batch) -> None:
    config = EdgeServerConfig(idle_timeout_s=600.0, reap_interval_s=600.0)  # the clock is moved by hand below
    with EdgeServer(secret=SECRET, config=config) as server, EdgeClient(server.address) as client:
        idle, _ = _open_and_step(client, batch, node=1)
        never_streamed = client.open_session(
            token(2), fresh_model("vgg5").spec, 2, fresh_model("vgg5").split(2)[1].state_dict(), OPTIM
        )
        assert server.num_sessions == 2
        open_ids = server.registry.ids()
        assert sorted(server.registry.reap_idle(now=time.monotonic() + 601.0)) == sorted(open_ids)
        assert server.num_sessions == 0
        with pytest.raises(SessionNotFoundError, match="closed or expired"):
            idle.step(torch.zeros(8, 32, 14, 14), batch[1], batch=5)
        with pytest.raises(SessionNotFoundError):
            never_streamed.close()
    assert wait_until(lambda: _live_sessions() == 0)


def test_active_sessions_do_not_time_out(batch) -> None:
    config = EdgeServerConfig(idle_timeout_s=0.4, reap_interval_s=0.05)
    with EdgeServer(secret=SECRET, config=config) as server, EdgeClient(server.address) as client:
        session, head = _open_and_step(client, batch)
        for b in range(1, 8):
            threading.Event().wait(0.1)
            session.step(head(batch[0]).detach(), batch[1], batch=b)
        _, metrics = session.close()
        assert metrics.batches == 8 and server.num_sessions == 0


def _lane(name: str) -> str | None:
    """The worker lane (``data`` / ``control``) a thread of the edge server's pools belongs to, else ``None``."""
    lane = name.removeprefix("edgeflower-edge-server-").split("_")[0]
    return lane if name.startswith("edgeflower-edge-server-") and lane in ("data", "control") else None


def test_threads_do_not_accumulate_and_all_end_at_stop(batch) -> None:
    """Per-session work leaves no thread behind; the worker lanes grow with how calls overlap (the scheduler's
    business), never beyond their configured size."""
    before = thread_names()
    with EdgeServer(secret=SECRET) as server, EdgeClient(server.address) as client:
        _open_and_step(client, batch)[0].close()
        warm = [name for name in thread_names() if _lane(name) is None]
        for i in range(12):
            session, _ = _open_and_step(client, batch, node=i, steps=2)
            if i % 3 == 0:
                session.abort()
            else:
                session.close()
        assert wait_until(lambda: server.num_sessions == 0)
        assert wait_until(lambda: sum(_lane(n) is None for n in thread_names()) <= len(warm) + 1), thread_names()
        lanes = [_lane(name) for name in thread_names()]
        assert lanes.count("data") <= server.config.workers and lanes.count("control") <= 2, thread_names()
    assert wait_until(lambda: thread_names() == before), thread_names()


def test_stopping_the_server_ends_open_streams_and_sessions(batch) -> None:
    before = thread_names()
    server = EdgeServer(secret=SECRET)
    server.start()
    client = EdgeClient(server.address, timeout_s=10)
    try:
        sessions = [_open_and_step(client, batch, node=i) for i in range(3)]
        session, head = sessions[0]
        server.stop(grace_s=0.2)
        assert server.num_sessions == 0 and server.wait(0)
        with pytest.raises(EdgeUnavailableError):
            session.step(head(batch[0]).detach(), batch[1], batch=1)
        for other, _ in sessions[1:]:
            other.abort()
    finally:
        client.close()
        server.stop()
    assert wait_until(lambda: thread_names() == before), thread_names()
    assert wait_until(lambda: _live_sessions() == 0)
