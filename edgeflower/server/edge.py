"""The edge server: hosts many devices' tails and trains them over the offload channel.

Run it in-process (the ServerApp starts a few on loopback)::

    with EdgeServer("127.0.0.1", 0, secret=secret) as server:
        address = server.address          # "127.0.0.1:<port>"
        ...

or as a separate process with ``edgeflower edge-server`` (see :mod:`edgeflower.commands.edge_server`).

Each session is bound to the token that opened it. Sessions end on ``Close``, when their training stream ends
without the client's ``end`` frame (client disconnect, cancellation, a rejected message), after ``idle_timeout_s``
without activity, and when the server stops; their tails and optimizers are then released. A rejected request
never touches another session: authentication happens before a stream is bound to a session.

Who may call what is :data:`edgeflower.transport.auth.RPC_ROLES`. Tokens bound to another edge server's id are
refused (:class:`~edgeflower.transport.auth.TokenVerifier`).

Rounds. An edge server does not learn rounds from the ServerApp's strategy; it knows, per run, the newest round
``R`` it has seen: the largest ``round`` of any token it accepted for that run (in ``Open`` and ``Import``) and of any
:meth:`EdgeServer.advance_round` (the in-process pool announces every round it plans). Token rounds are signed, so
only the ServerApp (the secret's holder) can raise ``R``. Guaranteed: once ``R`` is known, an ``Open`` or ``Import``
with a token of that run for a round below ``R`` is refused with ``FAILED_PRECONDITION``, whichever node it is for
and however long the token still lives. Not guaranteed: an edge server that has seen nothing of round ``R`` yet (an
external one before the first device of round ``R`` reaches it) still accepts unexpired tokens of round ``R - 1``;
tokens expire after minutes, and their sessions' results belong to a round the ServerApp has already aggregated.
Sessions already open when ``R`` rises are not closed (a session is bound to its token's round; its device's result
is the ServerApp's to accept or discard).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from logging import DEBUG, ERROR, INFO, WARNING
from types import TracebackType
from typing import Any

import grpc
from flwr.common.logger import log

from edgeflower.server.migration import export_session, import_session, seal, unseal
from edgeflower.server.registry import SessionRegistry
from edgeflower.server.session import TrainingSession
from edgeflower.transport.auth import RPC_ROLES, TokenVerifier, as_secret
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, VERSION, Limits, decode_frame
from edgeflower.transport.emulation import EmulatedLink, LinkProfile
from edgeflower.transport.errors import (
    EdgeAuthError,
    EdgeError,
    EdgeOverloadedError,
    InvalidMessageError,
    SessionNotFoundError,
    SessionStateError,
)
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
    expect_kind,
)
from edgeflower.transport.migration import (
    ImportReply,
    ImportRequest,
    MigrateReply,
    MigrateRequest,
    ResumeReply,
    ResumeRequest,
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

__all__ = ["EdgeServer", "EdgeServerConfig"]


@dataclass
class _NonceUse:
    """An ``Open`` token that was used: until when to remember it, the request's digest and what it opened."""

    expires_at: float
    digest: bytes
    session_id: str | None = None
    reply: bytes | None = None


@dataclass(frozen=True)
class EdgeServerConfig:
    """Limits and timeouts of an edge server.

    Attributes
    ----------
    max_message_bytes : int
        Largest message accepted or sent (gRPC's limit and the codec's).
    max_sessions : int
        Most sessions open at once.
    max_workers : int or None
        Worker threads of the data lane (requests being worked on: opens, steps, closes, migrations); default 16.
        An idle training stream holds none. A data call that finds them all busy for ``admission_wait_s`` is
        refused with ``RESOURCE_EXHAUSTED``; training steps wait for a worker instead.
    max_sessions_per_node : int
        Most sessions one device node (of one run) holds at once.
    max_model_params : int or None
        Largest model (parameters and buffers) a session may build, checked on the meta device before anything is
        allocated; default: what fits in one message (``max_message_bytes // 4``). An in-process pool sets it to
        what the run's model needs.
    max_open_bytes : int or None
        Largest ``Open``/``Import`` message; default ``4 * max_model_params`` plus 1 MiB of header (at most
        ``max_message_bytes``).
    first_message_s : float
        A call must deliver its request within this long (a half-open call is answered ``DEADLINE_EXCEEDED``).
    admission_wait_s : float
        How long a data call waits for a free worker before ``RESOURCE_EXHAUSTED``.
    stream_idle_s : float or None
        A training stream without a message for this long is ended (its session dropped); default
        ``idle_timeout_s``. A stream whose session was reaped ends within about a second.
    insecure : bool
        Allow plaintext on a non-loopback address (logs a WARNING); without it such an address needs ``tls``.
    idle_timeout_s : float
        A session without activity for this long is dropped.
    reap_interval_s : float or None
        How often to look for idle sessions; default ``min(idle_timeout_s / 4, 10)``.
    stop_grace_s : float
        Seconds in-flight RPCs get to finish when the server stops.
    peer_root_cert : bytes or None
        PEM root certificate for edge-to-edge calls (migration) to TLS-serving peers; plaintext when ``None``.
    peer_link_mbps : float
        Emulated edge-to-edge bandwidth for migrations in Mbit/s (0 = unlimited, i.e. the real network only).
    crash_after_migration_ack : bool
        Fault injection for tests: exit the process (status 137) right after a destination acknowledged a
        migration, before answering the device.
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_sessions: int = 64
    max_workers: int | None = None
    max_sessions_per_node: int = 2
    max_model_params: int | None = None
    max_open_bytes: int | None = None
    first_message_s: float = 5.0
    admission_wait_s: float = 2.0
    stream_idle_s: float | None = None
    insecure: bool = False
    idle_timeout_s: float = 300.0
    reap_interval_s: float | None = None
    stop_grace_s: float = 1.0
    peer_root_cert: bytes | None = None
    peer_link_mbps: float = 0.0
    crash_after_migration_ack: bool = False

    @property
    def workers(self) -> int:
        """The effective number of data-lane worker threads."""
        return self.max_workers or 16

    @property
    def model_params(self) -> int:
        """The effective model size limit (parameters and buffers)."""
        return self.max_model_params or self.max_message_bytes // 4

    @property
    def open_bytes(self) -> int:
        """The effective size limit of ``Open`` messages (the tail's float32 weights and a header)."""
        limit = self.max_open_bytes or 4 * self.model_params + (1 << 20)
        return min(limit, self.max_message_bytes)

    @property
    def import_bytes(self) -> int:
        """The effective size limit of ``Import`` messages: a migrated session carries the tail's weights, its
        optimizer's momentum, the round-start weights of a proximal term and its progress, so four times an
        ``Open``'s weights plus a header."""
        limit = 4 * (self.max_open_bytes or 4 * self.model_params) + (1 << 20)
        return min(limit, self.max_message_bytes)

    @property
    def stream_idle(self) -> float:
        """The effective idle deadline of a training stream."""
        return self.stream_idle_s or self.idle_timeout_s

    @property
    def reap_interval(self) -> float:
        """The effective reaper interval."""
        return self.reap_interval_s or min(self.idle_timeout_s / 4, 10.0)


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
    ) -> None:
        self.host = host
        self.port = port
        self.edge_id = edge_id
        self.tls = tls
        self.config = config or EdgeServerConfig()
        self.limits = Limits(max_message_bytes=self.config.max_message_bytes)
        self._verifier = TokenVerifier(secret, edge_id)
        self._secret = as_secret(secret)
        self._imported: dict[str, str] = {}  # migration token -> session id (one import per token)
        self._import_lock = threading.Lock()
        self._nonces: dict[str, _NonceUse] = {}  # Open tokens used (single-use), until they expire
        self._rounds: dict[int, int] = {}  # run -> newest round seen (tokens accepted, advance_round)
        self._open_lock = threading.Lock()
        self.registry = SessionRegistry(
            self.config.max_sessions, self.config.idle_timeout_s, self.config.max_sessions_per_node
        )
        self._server: RunningServer | None = None
        self._stopped = threading.Event()
        self._address: str | None = None

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
            METHOD_MIGRATE: Unary(self._migrate, max_request_bytes=64 * 1024),
            METHOD_IMPORT: Unary(self._import, max_request_bytes=self.config.import_bytes),
            METHOD_RESUME: Unary(self._resume, max_request_bytes=64 * 1024),
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
        req = OpenRequest.from_frame(decode_frame(request, self.limits))
        claims = self._verifier.verify(req.token, roles=RPC_ROLES["edge/Open"])  # migration: restart mode
        digest = hashlib.sha256(request).digest()
        with self._open_lock:
            used = self._nonces.get(claims.nonce)
            if used is not None:
                return self._reopen(used, digest)
            if req.token in self._imported:
                raise EdgeAuthError("this token was already used to import a migrated session")
            self._check_round(claims.run_id, claims.server_round)
            self.registry.check_room(claims.run_id, claims.node_id)  # refuse before building anything
            use = self._nonces[claims.nonce] = _NonceUse(claims.expires_at, digest)  # reserved
        try:
            session = TrainingSession(
                secrets.token_hex(16), claims, req.token, req, max_params=self.config.model_params
            )
            self.registry.add(session)
        except BaseException:
            with self._open_lock:  # nothing was opened: the token may be used again (e.g. after RESOURCE_EXHAUSTED)
                self._nonces.pop(claims.nonce, None)
            raise
        reply = OpenReply(session.session_id, self.edge_id or "", session.input_shape, session.expects_grad)
        with self._open_lock:
            use.session_id, use.reply = session.session_id, reply.to_bytes()
            self._seen_round(claims.run_id, claims.server_round)
            self._forget_expired_nonces()
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
        with self._open_lock:
            self._seen_round(int(run_id), int(server_round))

    def newest_round(self, run_id: int) -> int | None:
        """The newest round this server has seen for ``run_id`` (``None``: none yet)."""
        with self._open_lock:
            return self._rounds.get(run_id)

    def _check_round(self, run_id: int, server_round: int) -> None:
        newest = self._rounds.get(run_id)
        if newest is not None and server_round < newest:
            raise SessionStateError(
                f"token is for round {server_round} of run {run_id}, this edge server has seen round {newest}"
            )

    def _seen_round(self, run_id: int, server_round: int) -> None:
        self._rounds[run_id] = max(self._rounds.get(run_id, server_round), server_round)

    def _reopen(self, used: _NonceUse, digest: bytes) -> bytes:
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

    def _forget_expired_nonces(self) -> None:
        now = time.time()
        if len(self._nonces) > 1024 or len(self._nonces) % 64 == 0:
            for nonce in [n for n, u in self._nonces.items() if u.expires_at < now - 60]:
                del self._nonces[nonce]

    def _close(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        req = CloseRequest.from_frame(decode_frame(request, self.limits))
        session = self.registry.get(req.session_id)
        session.check_owner(req.token)
        try:
            with session.lock:
                reply = CloseReply(session.state_dict(), session.final_metrics())
            return reply.to_bytes(self.limits)
        finally:
            self.registry.drop(session.session_id, "closed")

    # -- migration (see edgeflower.server.migration and edgeflower.transport.migration) --------------------------
    def _migrate(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Source side: export the detached session, hand it to the destination, free it on the ack."""
        from edgeflower.transport.client import EdgeClient  # the edge server is a client of its peer here

        req = MigrateRequest.from_frame(decode_frame(request, self.limits))
        session = self.registry.get(req.session_id)
        session.check_owner(req.token)
        t0 = time.perf_counter()
        with session.lock:
            if session.attached:
                raise SessionStateError(f"session {session.session_id} still has a training stream: detach first")
            state = export_session(session, self.limits)
        export_s = time.perf_counter() - t0
        imp = ImportRequest(
            req.migration_token,
            seal(state, req.migration_token, self._secret),
            state,
            req.expect_model,
            req.expect_split_point,
        )
        t1 = time.perf_counter()
        if self.config.peer_link_mbps > 0:
            EmulatedLink(LinkProfile(self.config.peer_link_mbps, self.config.peer_link_mbps)).transmit(len(state), True)
        with EdgeClient(
            req.destination, self.config.peer_root_cert, max_message_bytes=self.limits.max_message_bytes
        ) as peer:
            ack = ImportReply.from_frame(peer.call(METHOD_IMPORT, imp.to_bytes(self.limits), 120.0))
        transfer_s = time.perf_counter() - t1
        self.registry.drop(session.session_id, f"migrated to {req.destination}")  # only after the ack
        log(
            INFO,
            "edge server: session %s migrated to %s (%d bytes)",
            session.session_id[:8],
            req.destination,
            len(state),
        )
        if self.config.crash_after_migration_ack:
            log(ERROR, "edge server: fault injection: exiting right after the migration ack")
            os._exit(137)
        return MigrateReply(ack.session_id, ack.edge_id, len(state), export_s, transfer_s).to_bytes()

    def _import(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Destination side: accept a sealed session state under a migration token issued for this server."""
        req = ImportRequest.from_frame(decode_frame(request, self.limits))
        claims = self._verifier.verify(req.migration_token, roles=RPC_ROLES["edge/Import"])
        with self._open_lock:
            self._check_round(claims.run_id, claims.server_round)
        with self._import_lock:
            if req.migration_token in self._imported:
                raise EdgeAuthError("this migration token was already used (replayed migration)")
            if claims.nonce in self._nonces:
                raise EdgeAuthError("this migration token was already used to open a session")
            unseal(req.state, req.migration_token, req.mac, self._secret)
            session = import_session(
                secrets.token_hex(16),
                claims,
                req.migration_token,
                req.state,
                self.limits,
                req.expect_model,
                req.expect_split_point,
                self.config.model_params,
            )
            self.registry.add(session)
            self._imported[req.migration_token] = session.session_id
        with self._open_lock:
            self._seen_round(claims.run_id, claims.server_round)
        log(
            INFO,
            "edge server: imported a migrated session as %s for run %d node %d round %d (after batch %d)",
            session.session_id[:8],
            claims.run_id,
            claims.node_id,
            claims.server_round,
            session.last_batch,
        )
        return ImportReply(session.session_id, self.edge_id or "").to_bytes()

    def _resume(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Tell the device which session its migration token owns here."""
        req = ResumeRequest.from_frame(decode_frame(request, self.limits))
        self._verifier.verify(req.migration_token, check_expiry=False, roles=RPC_ROLES["edge/Resume"])
        sid = self._imported.get(req.migration_token)
        if sid is None:
            raise SessionNotFoundError("no session was migrated here with this token")
        session = self.registry.get(sid)
        session.check_owner(req.migration_token)
        return ResumeReply(
            sid, self.edge_id or "", session.input_shape, session.expects_grad, session.last_batch
        ).to_bytes()

    def _attach(self, context: grpc.ServicerContext) -> TrainingSession:
        meta = _metadata(context)
        if SESSION_KEY not in meta or TOKEN_KEY not in meta:
            raise InvalidMessageError(f"a training stream needs the {SESSION_KEY!r} and {TOKEN_KEY!r} metadata")
        session = self.registry.get(meta[SESSION_KEY])
        session.check_owner(meta[TOKEN_KEY])
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
            return None
        req = StepRequest.from_frame(frame)
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
        sid, clean = session.session_id, False
        idle = self.config.stream_idle
        code: grpc.StatusCode | None = None
        detail = ""
        reader = server.reader(request_iterator)
        try:
            while True:
                try:
                    raw = await reader.next(min(1.0, idle))
                except ServerStoppingError:
                    code, detail = grpc.StatusCode.UNAVAILABLE, "the edge server is stopping"
                    break
                except TimeoutError:
                    if session.closed:
                        code, detail = grpc.StatusCode.NOT_FOUND, f"session {sid} was closed or expired"
                        break
                    if time.monotonic() - session.last_active > idle:
                        code = grpc.StatusCode.NOT_FOUND
                        detail = f"session {sid} was closed or expired (its training stream was idle for {idle:g} s)"
                        break
                    continue
                if raw is None:
                    break  # half-closed without the end frame
                try:
                    reply = await server.run_data(self._step, session, raw)
                except EdgeError as exc:
                    log(WARNING, "edge server: train (session %s) rejected: %s %s", sid[:8], exc.code.name, exc.detail)
                    code, detail = exc.code, exc.detail
                    break
                except Exception as exc:
                    log(ERROR, "edge server: train (session %s) failed: %r", sid[:8], exc)
                    code, detail = grpc.StatusCode.INTERNAL, f"edge server error in train: {type(exc).__name__}: {exc}"
                    break
                if reply is None:
                    clean = True
                    return
                yield reply
        finally:
            reader.cancel()
            session.attached = False
            if not clean:
                self._drop_later(sid, detail or "training stream broken (disconnect, cancellation or rejected message)")
        if code is not None:
            await context.abort(code, detail)

    def _drop_later(self, session_id: str, reason: str) -> None:
        """Drop a session from a worker thread (dropping waits for a step in progress: never on the loop)."""
        server = self._server
        try:
            if server is None:
                raise RuntimeError("stopped")
            server.data.pool.submit(self.registry.drop, session_id, reason)
        except RuntimeError:
            self.registry.drop(session_id, reason)
