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
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from types import TracebackType
from typing import Any

import grpc
from flwr.common.logger import log

from edgeflower.server.migration import export_session, import_session, seal, unseal
from edgeflower.server.registry import SessionRegistry
from edgeflower.server.session import TrainingSession
from edgeflower.transport.auth import TokenVerifier, as_secret
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, VERSION, Limits, decode_frame
from edgeflower.transport.emulation import EmulatedLink, LinkProfile
from edgeflower.transport.errors import (
    EdgeAuthError,
    EdgeError,
    InvalidMessageError,
    SessionNotFoundError,
    SessionStateError,
)
from edgeflower.transport.grpc_server import RunningServer, start_server
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
    identity,
)
from edgeflower.transport.tls import TLSConfig

__all__ = ["EdgeServer", "EdgeServerConfig"]


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
        gRPC worker threads (each open training stream holds one); default ``2 * max_sessions + 8``. Also the
        limit of concurrent RPCs: beyond it calls fail with ``RESOURCE_EXHAUSTED`` instead of queueing.
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
    idle_timeout_s: float = 300.0
    reap_interval_s: float | None = None
    stop_grace_s: float = 1.0
    peer_root_cert: bytes | None = None
    peer_link_mbps: float = 0.0
    crash_after_migration_ack: bool = False

    @property
    def workers(self) -> int:
        """The effective number of worker threads."""
        return self.max_workers or 2 * self.max_sessions + 8

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
        self.registry = SessionRegistry(self.config.max_sessions, self.config.idle_timeout_s)
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
        running = start_server(
            [self._handlers()], self.host, self.port, cfg.workers, cfg.max_message_bytes, self.tls, "edge server"
        )
        self._server, self.port, self._address = running, running.port, running.address
        self._stopped.clear()
        self.registry.start_reaper(cfg.reap_interval)
        log(
            INFO,
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
    def _handlers(self) -> grpc.GenericRpcHandler:
        kw = {"request_deserializer": identity, "response_serializer": identity}
        handlers = {
            METHOD_OPEN: grpc.unary_unary_rpc_method_handler(self._guard(self._open), **kw),
            METHOD_CLOSE: grpc.unary_unary_rpc_method_handler(self._guard(self._close), **kw),
            METHOD_HEALTH: grpc.unary_unary_rpc_method_handler(self._guard(self._health), **kw),
            METHOD_TRAIN: grpc.stream_stream_rpc_method_handler(self._train, **kw),
            METHOD_MIGRATE: grpc.unary_unary_rpc_method_handler(self._guard(self._migrate), **kw),
            METHOD_IMPORT: grpc.unary_unary_rpc_method_handler(self._guard(self._import), **kw),
            METHOD_RESUME: grpc.unary_unary_rpc_method_handler(self._guard(self._resume), **kw),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE, {path.rsplit("/", 1)[1]: handler for path, handler in handlers.items()}
        )

    def _abort(self, context: grpc.ServicerContext, exc: BaseException, where: str) -> None:
        """Abort the RPC with the status of ``exc`` (raises)."""
        if isinstance(exc, EdgeError):
            log(WARNING, "edge server: %s rejected: %s %s", where, exc.code.name, exc.detail)
            context.abort(exc.code, exc.detail)
        log(ERROR, "edge server: %s failed: %r", where, exc)
        context.abort(grpc.StatusCode.INTERNAL, f"edge server error in {where}: {type(exc).__name__}: {exc}")

    def _guard(self, fn: Callable[[bytes, grpc.ServicerContext], bytes]) -> Callable[..., bytes]:
        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return fn(request, context)
            except Exception as exc:
                self._abort(context, exc, fn.__name__.lstrip("_"))
                raise  # pragma: no cover - abort raises

        return handler

    # -- RPCs ---------------------------------------------------------------------------------------------------------
    def _health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        expect_kind(decode_frame(request, self.limits), "health")
        status = "serving" if self._server is not None else "stopping"
        return HealthInfo(status, self.edge_id or "", self.num_sessions, VERSION).to_bytes()

    def _open(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        req = OpenRequest.from_frame(decode_frame(request, self.limits))
        claims = self._verifier.verify(req.token)
        session = TrainingSession(secrets.token_hex(16), claims, req.token, req)
        self.registry.add(session)
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
        reply = OpenReply(session.session_id, self.edge_id or "", session.input_shape, session.expects_grad)
        return reply.to_bytes()

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
        claims = self._verifier.verify(req.migration_token)
        with self._import_lock:
            if req.migration_token in self._imported:
                raise EdgeAuthError("this migration token was already used (replayed migration)")
            unseal(req.state, req.migration_token, req.mac, self._secret)
            session = import_session(
                secrets.token_hex(16),
                claims,
                req.migration_token,
                req.state,
                self.limits,
                req.expect_model,
                req.expect_split_point,
            )
            self.registry.add(session)
            self._imported[req.migration_token] = session.session_id
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
        self._verifier.verify(req.migration_token, check_expiry=False)
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

    def _train(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """One session's training stream: a ``step_result`` per ``step``, in order, until the ``end`` frame.

        The session is dropped when the stream terminates without ``end`` (see ``on_done``).
        """
        try:
            session = self._attach(context)
        except Exception as exc:
            self._abort(context, exc, "train")
            return
        state: dict[str, Any] = {"clean": False}
        sid = session.session_id

        def on_done() -> None:
            session.attached = False
            if not state["clean"]:
                self.registry.drop(sid, "training stream broken (disconnect, cancellation or rejected message)")

        context.add_callback(on_done)
        try:
            for raw in request_iterator:
                t0 = time.perf_counter()
                frame = decode_frame(raw, self.limits)
                if frame.kind == END_KIND:
                    state["clean"] = True
                    return
                req = StepRequest.from_frame(frame)
                with session.lock:
                    result = session.step(req)
                result.server_s = time.perf_counter() - t0
                yield result.to_bytes(self.limits)
        except grpc.RpcError:
            return  # the client went away; on_done drops the session
        except Exception as exc:
            self._abort(context, exc, f"train (session {sid[:8]})")
