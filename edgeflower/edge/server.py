"""The edge server: hosts many devices' tails and trains them over the offload channel.

Run it in-process (the ServerApp starts a few on loopback)::

    with EdgeServer("127.0.0.1", 0, secret=secret) as server:
        address = server.address          # "127.0.0.1:<port>"
        ...

or as a separate process with ``edgeflower edge-server`` (see :mod:`edgeflower.commands.edge_server`).

Each session is bound to the token that opened it, and lives as long as it: every call on the session (a step, a new
training stream, ``Close``, ``Migrate``, ``Resume``) is refused once that token has expired. The ServerApp issues a
round's tokens for the round's timeout (run-config ``round-timeout``). Sessions end on ``Close``, when their training
stream ends without the client's ``end`` frame (client disconnect, cancellation, a rejected message), after
``idle_timeout_s`` without activity, and when the server stops; their tails and optimizers are then released. A
rejected request never touches another session: authentication happens before a stream is bound to a session.

Who may call what is :data:`edgeflower.transport.auth.RPC_ROLES`. Tokens bound to another edge server's id are
refused (:class:`~edgeflower.transport.auth.TokenVerifier`).

Rounds. An edge server does not learn rounds from the ServerApp's strategy; it knows, per run, the newest round
``R`` it has seen: the largest ``round`` of any token it accepted for that run (in ``Open`` and ``Import``) and of any
:meth:`EdgeServer.advance_round` (the in-process pool announces every round it plans). Token rounds are signed, so
only the ServerApp (the secret's holder) can raise ``R``. Guaranteed: once ``R`` is known, an ``Open`` or ``Import``
with a token of that run for a round below ``R`` is refused with ``FAILED_PRECONDITION``, whichever node it is for
and however long the token still lives. Not guaranteed: an edge server that has seen nothing of round ``R`` yet (an
external one before the first device of round ``R`` reaches it) still accepts unexpired tokens of round ``R - 1``;
tokens expire with their round, and their sessions' results belong to a round the ServerApp has already aggregated.
Sessions already open when ``R`` rises are not closed (a session is bound to its token's round; its device's result
is the ServerApp's to accept or discard).

The parts: limits in :mod:`edgeflower.edge.config`, the tokens accepted in :mod:`edgeflower.edge.ledger`, the
sessions in :mod:`edgeflower.edge.registry` and :mod:`edgeflower.edge.session`, the migration RPCs in
:mod:`edgeflower.edge.migration`; this module binds them to the gRPC service.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from logging import DEBUG, ERROR, INFO, WARNING
from types import TracebackType
from typing import Any

import grpc
from flwr.common.logger import log

from edgeflower.edge.config import EdgeServerConfig
from edgeflower.edge.ledger import NonceUse, TokenLedger
from edgeflower.edge.migration import MigrationAcked, MigrationHandlers
from edgeflower.edge.registry import SessionRegistry
from edgeflower.edge.session import TrainingSession
from edgeflower.transport.auth import RPC_ROLES, TokenVerifier, as_secret
from edgeflower.transport.codec import VERSION, Limits, decode_frame, decode_header
from edgeflower.transport.errors import (
    EdgeAuthError,
    EdgeError,
    EdgeOverloadedError,
    InvalidMessageError,
    SessionNotFoundError,
    SessionStateError,
)
from edgeflower.transport.fields import str_field
from edgeflower.transport.grpc_server import (
    RunningServer,
    ServerOptions,
    ServerStoppingError,
    StreamHandler,
    Unary,
    start_server,
)
from edgeflower.transport.messages import (
    END_KIND,
    CloseReply,
    CloseRequest,
    HealthInfo,
    OpenReply,
    OpenRequest,
    StepRequest,
    ends_before_migration,
    expect_kind,
)
from edgeflower.transport.service import (
    METHOD_CLOSE,
    METHOD_HEALTH,
    METHOD_IMPORT,
    METHOD_MIGRATE,
    METHOD_OPEN,
    METHOD_RESUME,
    METHOD_TRAIN,
    SERVICE,
    SESSION_KEY,
    TOKEN_KEY,
)
from edgeflower.transport.tls import TLSConfig

__all__ = ["EdgeServer", "EdgeServerConfig"]  # EdgeServerConfig (edgeflower.edge.config) re-exported here


@dataclass
class _StreamEnd:
    """How a training stream ended: cleanly (the ``end`` frame), or with the status to abort it with (if any)."""

    clean: bool = False
    code: grpc.StatusCode | None = None
    detail: str = ""

    def fail(self, code: grpc.StatusCode, detail: str) -> None:
        self.code, self.detail = code, detail


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


class EdgeServer:
    """A gRPC edge server hosting split-training sessions.

    Parameters
    ----------
    host : str
        Interface to bind, e.g. ``"127.0.0.1"`` or ``"0.0.0.0"``.
    port : int
        Port to bind; ``0`` picks a free one (see :attr:`address` after :meth:`start`).
    secret : bytes or str
        The token secret shared with the ServerApp's :class:`~edgeflower.transport.auth.TokenIssuer`.
    tls : TLSConfig, optional
        Serve over TLS with this certificate and key.
    edge_id : str, optional
        This server's id; tokens issued for another edge id are refused.
    config : EdgeServerConfig, optional
        Limits and timeouts.
    on_migration_acked : callable, optional
        ``(session_id, destination)``: called right after a destination acknowledged a session migrated away from
        here (the session is freed here), before the device is answered; nothing by default. A seam for
        observers (tests install a crash here to kill the process at that point).
    clock : callable, optional
        Unix time now (default ``time.time``), against which tokens and sessions expire; tests move it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        secret: bytes | str,
        tls: TLSConfig | None = None,
        edge_id: str | None = None,
        config: EdgeServerConfig | None = None,
        on_migration_acked: MigrationAcked | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.port = port
        self.edge_id = edge_id
        self.tls = tls
        self.config = config or EdgeServerConfig()
        self.limits = Limits(max_message_bytes=self.config.max_message_bytes)
        self._verifier = TokenVerifier(secret, edge_id, clock=clock)
        self.tokens = TokenLedger(clock)  # Open tokens used, migration tokens imported, newest round per run
        self.registry = SessionRegistry(
            self.config.max_sessions, self.config.idle_timeout_s, self.config.max_sessions_per_node
        )
        self.migration = MigrationHandlers(
            self.registry,
            self._verifier,
            as_secret(secret),
            self.tokens,
            self.config,
            edge_id or "",
            on_migration_acked,
        )
        self._server: RunningServer | None = None
        self._stopped = threading.Event()
        self._address: str | None = None

    def set_peers(self, peers: Mapping[str, str] | None) -> None:
        """Restrict migrations to ``peers`` (edge id -> address; ``None``: any destination), as
        ``EdgeServerConfig.peers`` does, for peers whose addresses are known only once they serve."""
        self.migration.peers = None if peers is None else dict(peers)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``host:port`` the server is bound to (after :meth:`start`)."""
        if self._address is None:
            raise RuntimeError("the edge server is not started")
        return self._address

    @property
    def num_sessions(self) -> int:
        """Open sessions."""
        return len(self.registry)

    def start(self) -> str:
        """Bind, start serving and return the bound address ``host:port``.

        Raises
        ------
        OSError
            If the address cannot be bound.
        """
        if self._server is not None:
            return self.address
        cfg = self.config
        options = ServerOptions(
            data_workers=cfg.workers,
            control_workers=2,
            first_message_s=cfg.first_message_s,
            admission_wait_s=cfg.admission_wait_s,
            max_waiting_bytes=cfg.max_waiting_bytes,
        )
        running = start_server(
            SERVICE,
            self._handlers(),
            self.host,
            self.port,
            cfg.max_message_bytes,
            self.tls,
            "edge server",
            options,
            cfg.insecure,
            "session tokens (in Open, Close and the stream metadata), model weights, activations, gradients and labels",
        )
        self._server, self.port, self._address = running, running.port, running.address
        self._stopped.clear()
        self.registry.start_reaper(cfg.reap_interval)
        log(  # DEBUG: the gRPC server has logged "edge server serving on ADDRESS (TLS|plaintext)" (one line per event)
            DEBUG,
            "edge server %s listening on %s (%s, max %d sessions)",
            self.edge_id or "",
            self._address,
            "TLS" if self.tls else "insecure",
            cfg.max_sessions,
        )
        return self._address

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving: cancel open streams, drop every session, join every thread. Idempotent."""
        server, self._server = self._server, None
        if server is not None:  # sessions are dropped before the workers are joined: no stream waits on one
            server.stop(self.config.stop_grace_s if grace_s is None else grace_s, self._drop_sessions)
            log(INFO, "edge server %s on %s stopped", self.edge_id or "", self._address)
        else:
            self._drop_sessions()
        self._stopped.set()

    def _drop_sessions(self) -> None:
        self.registry.stop_reaper()
        self.registry.clear()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` has finished (or the timeout); return whether it has."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> EdgeServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- gRPC plumbing ------------------------------------------------------------------------------------------------
    def _handlers(self) -> dict[str, Unary | StreamHandler]:
        big = self.config.open_bytes
        handlers: dict[str, Unary | StreamHandler] = {
            METHOD_OPEN: Unary(self._open, max_request_bytes=big),
            METHOD_CLOSE: Unary(self._close, max_request_bytes=64 * 1024),
            METHOD_HEALTH: Unary(self._health, control=True, max_request_bytes=64 * 1024),
            METHOD_TRAIN: self._train,
            METHOD_MIGRATE: Unary(self.migration.migrate, max_request_bytes=64 * 1024),
            METHOD_IMPORT: Unary(self.migration.accept, max_request_bytes=self.config.import_bytes),
            METHOD_RESUME: Unary(self.migration.resume, max_request_bytes=64 * 1024),
        }
        return {path.rsplit("/", 1)[1]: handler for path, handler in handlers.items()}

    # -- RPCs ---------------------------------------------------------------------------------------------------------
    def _health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        expect_kind(decode_frame(request, self.limits), "health")
        status = "serving" if self._server is not None else "stopping"
        return HealthInfo(status, self.edge_id or "", self.num_sessions, VERSION).to_bytes()

    def _open(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Open a session with a single-use ``device`` token (a retry of the very same request gets the same,
        still untouched session back: exactly once)."""
        header = expect_kind(decode_header(request, self.limits), "open")  # the token before the tensors are read
        claims = self._verifier.verify(str_field(header.meta, "token"), roles=RPC_ROLES["edge/Open"])  # or migration
        req = OpenRequest.from_frame(decode_frame(request, self.limits))  # the same header: the same token
        digest = hashlib.sha256(request).digest()
        tokens = self.tokens
        with tokens.lock:
            used = tokens.nonces.get(claims.nonce)
            if used is not None:
                return self._reopen(used, digest)
            if req.token in tokens.imported:
                raise EdgeAuthError("this token was already used to import a migrated session")
            tokens.check_round(claims.run_id, claims.server_round)
            self.registry.check_room(claims.run_id, claims.node_id)  # refuse before building anything
            use = tokens.nonces[claims.nonce] = NonceUse(claims.expires_at, digest)  # reserved
        try:
            session = TrainingSession(
                secrets.token_hex(16), claims, req.token, req, max_params=self.config.model_params
            )
            self.registry.add(session)
        except BaseException:
            with tokens.lock:  # nothing was opened: the token may be used again (e.g. after RESOURCE_EXHAUSTED)
                tokens.nonces.pop(claims.nonce, None)
            raise
        reply = OpenReply(session.session_id, self.edge_id or "", session.input_shape, session.expects_grad)
        with tokens.lock:
            use.session_id, use.reply = session.session_id, reply.to_bytes()
            tokens.seen_round(claims.run_id, claims.server_round)
            tokens.forget_expired_nonces()
        log(
            INFO,
            "edge server: session %s opened for run %d node %d round %d (%s, k=%d)",
            session.session_id[:8],
            claims.run_id,
            claims.node_id,
            claims.server_round,
            req.spec.name,
            req.split_point,
        )
        return use.reply

    def advance_round(self, run_id: int, server_round: int) -> None:
        """Tell this server that ``run_id`` is now in ``server_round``: tokens of older rounds of that run are refused
        from now on (the in-process pool calls it for every round it plans; rounds never go back)."""
        with self.tokens.lock:
            self.tokens.seen_round(int(run_id), int(server_round))

    def newest_round(self, run_id: int) -> int | None:
        """The newest round this server has seen for ``run_id`` (``None``: none yet)."""
        with self.tokens.lock:
            return self.tokens.rounds.get(run_id)

    def _reopen(self, used: NonceUse, digest: bytes) -> bytes:
        """A second ``Open`` with a used token: the same reply only for an identical retry of an untouched session."""
        if used.reply is None:
            raise EdgeOverloadedError("this token's Open is still in progress")
        session = None
        if used.digest == digest and used.session_id is not None:
            try:
                session = self.registry.get(used.session_id)
            except SessionNotFoundError:
                session = None
        if session is None or session.attached or session.metrics.micro_batches or session.closed:
            raise EdgeAuthError("this token was already used to open a session (an Open token is single-use)")
        log(INFO, "edge server: repeated Open of session %s answered again (client retry)", used.session_id[:8])
        return used.reply

    def _close(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        req = CloseRequest.from_frame(decode_frame(request, self.limits))
        session = self.registry.get(req.session_id)
        session.check_owner(req.token, self._verifier.clock())
        try:
            with session.lock:
                reply = CloseReply(session.state_dict(), session.final_metrics())
            return reply.to_bytes(self.limits)
        finally:
            self.registry.drop(session.session_id, "closed")

    def _attach(self, context: grpc.ServicerContext) -> TrainingSession:
        meta = _metadata(context)
        if SESSION_KEY not in meta or TOKEN_KEY not in meta:
            raise InvalidMessageError(f"a training stream needs the {SESSION_KEY!r} and {TOKEN_KEY!r} metadata")
        session = self.registry.get(meta[SESSION_KEY])
        session.check_owner(meta[TOKEN_KEY], self._verifier.clock())
        with session.lock:
            if session.closed:
                raise SessionNotFoundError(f"session {session.session_id} was closed or expired")
            if session.attached:
                raise SessionStateError(f"session {session.session_id} already has a training stream")
            session.attached = True
            session.touch()
        return session

    def _step(self, session: TrainingSession, raw: bytes) -> bytes | None:
        """One step message of a training stream (in a data worker); ``None`` for the ``end`` frame."""
        t0 = time.perf_counter()
        frame = decode_frame(raw, self.limits)
        if frame.kind == END_KIND:
            if ends_before_migration(frame):  # the device moves next: export while it finishes its batch
                self.migration.export_ahead(session)
            return None
        req = StepRequest.from_frame(frame, self.limits)
        session.check_current(self._verifier.clock())  # the stream's authority is its session's token
        with session.lock:
            result = session.step(req)
        result.server_s = time.perf_counter() - t0
        return result.to_bytes(self.limits)

    async def _train(self, request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """One session's training stream: a ``step_result`` per ``step``, in order, until the ``end`` frame.

        An idle stream holds no thread. The session is dropped when the stream terminates without ``end``
        (disconnect, cancellation, a rejected message, ``stream_idle_s`` without a message, server stop); a stream
        whose session was reaped or closed ends within about a second.
        """
        server = self._server
        assert server is not None
        try:
            session = self._attach(context)
        except EdgeError as exc:
            log(WARNING, "edge server: train rejected: %s %s", exc.code.name, exc.detail)
            await context.abort(exc.code, exc.detail)
            return
        end = _StreamEnd()
        reader = server.reader(request_iterator)
        try:
            while (raw := await self._receive(reader, session, end)) is not None:
                reply = await self._run_step(server, session, raw, end)
                if reply is None:
                    break
                yield reply
        finally:
            reader.cancel()
            session.attached = False
            if not end.clean:
                reason = end.detail or "training stream broken (disconnect, cancellation or rejected message)"
                self._drop_later(session.session_id, reason)
        if end.code is not None:
            await context.abort(end.code, end.detail)

    async def _receive(self, reader: Any, session: TrainingSession, end: _StreamEnd) -> bytes | None:
        """The stream's next message; ``None`` when the stream ends (half-closed, idle, the session gone, the server
        stopping: ``end`` says how)."""
        idle = self.config.stream_idle
        sid = session.session_id
        while True:
            try:
                return await reader.next(min(1.0, idle))  # None: half-closed without the end frame
            except ServerStoppingError:
                end.fail(grpc.StatusCode.UNAVAILABLE, "the edge server is stopping")
                return None
            except TimeoutError:
                if session.closed:
                    end.fail(grpc.StatusCode.NOT_FOUND, f"session {sid} was closed or expired")
                    return None
                if time.monotonic() - session.last_active > idle:
                    detail = f"session {sid} was closed or expired (its training stream was idle for {idle:g} s)"
                    end.fail(grpc.StatusCode.NOT_FOUND, detail)
                    return None

    async def _run_step(
        self, server: RunningServer, session: TrainingSession, raw: bytes, end: _StreamEnd
    ) -> bytes | None:
        """Run one message in a data worker; its reply, or ``None`` at the ``end`` frame or on a failure (``end``
        says which)."""
        sid = session.session_id
        try:
            reply = await server.run_data(self._step, session, raw)
        except EdgeError as exc:
            log(WARNING, "edge server: train (session %s) rejected: %s %s", sid[:8], exc.code.name, exc.detail)
            end.fail(exc.code, exc.detail)
            return None
        except Exception as exc:
            log(ERROR, "edge server: train (session %s) failed: %r", sid[:8], exc)
            end.fail(grpc.StatusCode.INTERNAL, f"edge server error in train: {type(exc).__name__}: {exc}")
            return None
        end.clean = reply is None
        return reply

    def _drop_later(self, session_id: str, reason: str) -> None:
        """Drop a session from a worker thread (dropping waits for a step in progress: never on the loop)."""
        server = self._server
        try:
            if server is None:
                raise RuntimeError("stopped")
            server.data.pool.submit(self.registry.drop, session_id, reason)
        except RuntimeError:
            self.registry.drop(session_id, reason)
