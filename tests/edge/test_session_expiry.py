"""A session serves its round and no call after it: every owner call checks the expiry of the session's token
against the edge server's clock (moved by the tests, never waited for)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from edgeflower.edge.server import EdgeServer
from edgeflower.transport import EdgeAuthError, EdgeClient, TokenIssuer
from edgeflower.transport.service import METHOD_CLOSE
from edgeflower.transport.session_messages import CloseRequest
from tests._edge_helpers import OPTIM, SECRET, fashion_batches, fresh_model, wait_until

K = 3
EXPIRED = r"expired .* a session ends with its round \(round-timeout\)"


class _Clock:
    """Unix time that moves only when the test moves it (the issuer's and the edge servers')."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def issuer(clock: _Clock) -> TokenIssuer:
    return TokenIssuer(SECRET, clock=clock)


@pytest.fixture
def edges(clock: _Clock) -> Iterator[tuple[EdgeServer, EdgeServer]]:
    with (
        EdgeServer(secret=SECRET, edge_id="edge-a", clock=clock) as a,
        EdgeServer(secret=SECRET, edge_id="edge-b", clock=clock) as b,
    ):
        yield a, b


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_batches(num_batches=1, batch_size=8)[0]


def _open(client: EdgeClient, node: int, issuer: TokenIssuer, ttl_s: float, x: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def]
    """A session opened with a ``ttl_s`` device token issued at the clock's time, one batch trained."""
    model = fresh_model("vgg5")
    head, tail = model.split(K)
    token = issuer.issue(7, node, 1, "edge-a", ttl_s=ttl_s)
    session = client.open_session(token, model.spec, K, tail.state_dict(), OPTIM)
    act = head(x).detach()
    session.step(act, y, batch=0, batch_size=len(y))
    return session, act


def _close(client: EdgeClient, session) -> None:  # type: ignore[no-untyped-def]
    """Close ``session`` by the raw RPC with its token (past the handle's own state)."""
    client.call(METHOD_CLOSE, CloseRequest(session.session_id, session.token).to_bytes(), 10)


def test_steps_close_and_migrate_are_refused_once_the_sessions_token_expired(edges, clock, issuer, batch):
    a, b = edges
    x, y = batch
    with EdgeClient(a.address) as client:
        streaming, act = _open(client, 1, issuer, 600, x, y)  # its training stream stays attached
        ended, _ = _open(client, 2, issuer, 600, x, y)
        ended.end_stream()
        ended.wait_detached()
        moving, _ = _open(client, 3, issuer, 600, x, y)
        moving.detach()
        clock.now += 599  # within the round: every call works
        streaming.step(act, y, batch=1, batch_size=len(y))
        ended.step(act, y, batch=1, batch_size=len(y))  # a new training stream attaches
        ended.end_stream()
        ended.wait_detached()
        clock.now += 2  # past the round's timeout
        with pytest.raises(EdgeAuthError, match=EXPIRED):
            streaming.step(act, y, batch=2, batch_size=len(y))  # on the open stream
        with pytest.raises(EdgeAuthError, match=EXPIRED):
            ended.step(act, y, batch=2, batch_size=len(y))  # a new stream is refused at attach
        with pytest.raises(EdgeAuthError, match=EXPIRED):
            _close(client, ended)
        migration = issuer.issue(7, 3, 1, "edge-b", ttl_s=600, role="migration")  # issued now: valid
        with pytest.raises(EdgeAuthError, match=EXPIRED):
            client.migrate(moving, b.address, migration)
        assert b.num_sessions == 0  # nothing moved
        assert wait_until(lambda: a.num_sessions == 2)  # the broken stream's session is dropped; the others wait
        for session in (ended, moving):  # for the idle reaper (a round that timed out leaves no caller)
            assert session.session_id in a.registry.ids()
            a.registry.drop(session.session_id, "reaped for the test")


def test_a_migrated_session_lives_as_long_as_its_migration_token(edges, clock, issuer, batch):
    a, b = edges
    x, y = batch
    with EdgeClient(a.address) as client, EdgeClient(b.address) as peer:
        session, act = _open(client, 4, issuer, 600, x, y)
        session.detach()
        migration = issuer.issue(7, 4, 1, "edge-b", ttl_s=100, role="migration")
        client.migrate(session, b.address, migration)
        moved = peer.resume(migration, K)
        moved.step(act, y, batch=1, batch_size=len(y))
        moved.end_stream()
        moved.wait_detached()
        clock.now += 101
        with pytest.raises(EdgeAuthError, match="token expired"):
            peer.resume(migration, K)
        with pytest.raises(EdgeAuthError, match=EXPIRED):
            moved.step(act, y, batch=2, batch_size=len(y))
        with pytest.raises(EdgeAuthError, match=EXPIRED):
            _close(peer, moved)
        assert b.num_sessions == 1
        b.registry.drop(moved.session_id, "reaped for the test")
