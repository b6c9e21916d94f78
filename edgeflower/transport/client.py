"""The device side of the offload channel: :class:`EdgeClient`, one connection to an edge server.

Typical sequential split training (one micro-batch per batch)::

    with EdgeClient("127.0.0.1:50051") as client:
        session = client.open_session(token, model.spec, k, tail.state_dict(), OptimizerSettings(0.01, 0.9))
        for b, (x, y) in enumerate(batches):
            act = head(x)
            result = session.step(act.detach(), y, batch=b)
            act.backward(result.grad)
            head_optimizer.step()
        tail_state, metrics = session.close()

:meth:`EdgeClient.open_session` returns a :class:`~edgeflower.transport.handle.SessionHandle` (re-exported here).
All per-batch traffic of a session uses one long-lived bidirectional gRPC stream
(:class:`~edgeflower.transport.stream.TrainStream`), started by the first :meth:`SessionHandle.send`.
:meth:`SessionHandle.send` does not wait, so a pipelined client can keep several micro-batches in flight and collect
the results, in order, with :meth:`SessionHandle.recv`. Every failure raises a subclass of
:class:`~edgeflower.transport.errors.EdgeError`; :class:`~edgeflower.transport.errors.EdgeUnavailableError` means the
edge server is gone (fall back to local training).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import grpc
import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.channel import open_channel
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, Limits, decode_frame, encode_frame
from edgeflower.transport.errors import (
    EdgeError,
    EdgeOverloadedError,
    EdgeTimeoutError,
    EdgeUnavailableError,
    from_rpc_error,
)
from edgeflower.transport.handle import SessionHandle
from edgeflower.transport.health import HealthInfo
from edgeflower.transport.migration import MigrateReply, MigrateRequest, ResumeReply, ResumeRequest
from edgeflower.transport.service import (
    METHOD_CLOSE,
    METHOD_HEALTH,
    METHOD_IMPORT,
    METHOD_MIGRATE,
    METHOD_OPEN,
    METHOD_RESUME,
    METHOD_TRAIN,
    SESSION_KEY,
    TOKEN_KEY,
    identity,
)
from edgeflower.transport.session_messages import OpenReply, OpenRequest
from edgeflower.transport.settings import DPParams, OptimizerSettings
from edgeflower.transport.stream import TrainStream
from edgeflower.transport.wire import WIRE_DTYPES

__all__ = ["EdgeClient", "SessionHandle"]  # SessionHandle: re-exported from edgeflower.transport.handle


class EdgeClient:
    """A connection to one edge server.

    Parameters
    ----------
    address : str
        ``host:port`` of the edge server.
    tls_root_cert : bytes, optional
        PEM root certificate to trust; when given the channel uses TLS.
    server_name : str, optional
        Expected TLS server name when it differs from the host in ``address``.
    max_message_bytes : int
        Largest message sent or received.
    timeout_s : float
        Default timeout of every call and of waiting for one step result.
    retries : int
        How often ``open_session`` (and :meth:`call_retrying`) retries a transient refusal (``RESOURCE_EXHAUSTED``
        of a busy server, ``UNAVAILABLE``), with exponential back-off from ``retry_backoff_s``. Retrying an
        ``Open`` is exactly-once: the server answers a repeated identical ``Open`` with the session the first one
        opened (an ``Open`` token opens one session).
    retry_backoff_s : float
        The first back-off.
    wire_dtype : str
        Default wire format of the sessions this client opens or resumes (:mod:`~edgeflower.transport.wire`:
        ``float32`` (exact), ``bfloat16``, ``float16``, ``int8``, ``int8-channel``).
    """

    def __init__(
        self,
        address: str,
        tls_root_cert: bytes | None = None,
        *,
        server_name: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout_s: float = 120.0,
        retries: int = 4,
        retry_backoff_s: float = 0.1,
        wire_dtype: str = "float32",
    ) -> None:
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {', '.join(WIRE_DTYPES)}, got {wire_dtype!r}")
        self.wire_dtype = wire_dtype
        self.address = address
        self.retries, self.retry_backoff_s = retries, retry_backoff_s
        self.limits = Limits(max_message_bytes=max_message_bytes)
        self.timeout_s = timeout_s
        self._channel = open_channel(address, max_message_bytes, tls_root_cert, server_name)
        kw = {"request_serializer": identity, "response_deserializer": identity}
        self._unary = {
            method: self._channel.unary_unary(method, **kw)
            for method in (METHOD_OPEN, METHOD_CLOSE, METHOD_HEALTH, METHOD_MIGRATE, METHOD_IMPORT, METHOD_RESUME)
        }
        self._train = self._channel.stream_stream(METHOD_TRAIN, **kw)

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (cancels every stream still open on it)."""
        self._channel.close()

    def call(self, method: str, frame: bytes, timeout_s: float | None = None) -> Any:
        """Low level: send one encoded frame to a unary ``method`` and return the decoded reply frame.

        Raises
        ------
        EdgeError
            The server's error, translated (see :mod:`edgeflower.transport.errors`).
        """
        stub = self._unary.get(method)
        if stub is None:
            raise ValueError(f"{method!r} is not a unary method of the offload channel")
        try:
            reply = stub(frame, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None
        return decode_frame(reply, self.limits)

    def call_retrying(self, method: str, frame: bytes, timeout_s: float | None = None) -> Any:
        """:meth:`call`, retrying transient refusals (``RESOURCE_EXHAUSTED`` of a busy server, ``UNAVAILABLE``; not a
        timeout) up to :attr:`retries` times with jittered exponential back-off; use it only for idempotent requests.
        """
        backoff = self.retry_backoff_s
        for attempt in range(self.retries + 1):
            try:
                return self.call(method, frame, timeout_s)
            except (EdgeOverloadedError, EdgeUnavailableError) as exc:
                if attempt == self.retries or isinstance(exc, EdgeTimeoutError):  # a hung server: no retry storm
                    raise
                time.sleep(backoff * (0.5 + secrets.randbelow(1000) / 1000))
                backoff *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def health(self, timeout_s: float = 5.0) -> HealthInfo:
        """Ask the edge server for its health.

        Raises
        ------
        EdgeUnavailableError
            If the server cannot be reached within ``timeout_s``.
        """
        return HealthInfo.from_frame(self.call(METHOD_HEALTH, encode_frame("health"), timeout_s))

    def open_session(
        self,
        token: str,
        spec: ModelSpec,
        split_point: int,
        tail_state: Mapping[str, torch.Tensor],
        optimizer: OptimizerSettings,
        timeout_s: float | None = None,
        *,
        dp: DPParams | None = None,
        wire_dtype: str | None = None,
    ) -> SessionHandle:
        """Open a training session on the edge server.

        Parameters
        ----------
        token : str
            Session token issued by the ServerApp for this run, node and round.
        spec : ModelSpec
            The whole model's spec.
        split_point : int
            Blocks kept on the device, ``0 <= split_point < num_blocks`` (with ``num_blocks`` there is nothing
            to offload: do not open a session).
        tail_state : mapping of str to torch.Tensor
            Initial state dict of blocks ``[split_point:]`` (e.g. ``model.split(k)[1].state_dict()``).
        optimizer : OptimizerSettings
            Server-side SGD settings.
        timeout_s : float, optional
            Timeout of the call (default: the client's).
        dp : DPParams, optional
            Train the tail with DP-SGD (``dp = full``: per-sample clipping and Gaussian noise at each batch's step,
            with the session's own accountant); ``None`` (the default) trains it without DP. A device's privacy
            engine builds these (:meth:`edgeflower.privacy.node.NodeRoundDP.tail_params`).
        wire_dtype : str, optional
            How the session's activations and gradients travel (:mod:`~edgeflower.transport.wire`; default: the
            client's :attr:`wire_dtype`). The tail state goes up and comes back as it is.

        Returns
        -------
        SessionHandle

        Raises
        ------
        EdgeAuthError
            Bad, expired or foreign token.
        InvalidMessageError
            Bad spec, split point, optimizer settings, DP parameters or tail state.
        EdgeOverloadedError
            The server has too many sessions (after the retries).
        EdgeUnavailableError
            The server cannot be reached (after the retries).
        """
        wire = wire_dtype or self.wire_dtype
        request = OpenRequest(token, spec, split_point, optimizer, dict(tail_state), dp=dp, wire_dtype=wire)
        frame = self.call_retrying(METHOD_OPEN, request.to_bytes(self.limits), timeout_s)
        return SessionHandle(self, OpenReply.from_frame(frame), token, split_point, wire_dtype=wire)

    def migrate(
        self,
        handle: SessionHandle,
        destination: str,
        migration_token: str,
        expect_model: ModelSpec | None = None,
        timeout_s: float | None = None,
    ) -> MigrateReply:
        """Move ``handle``'s session from this edge server to ``destination`` (FedFly).

        The handle's training stream is detached first (at a batch boundary: nothing may be pending; the ``end``
        frame and the ``Migrate`` request go together, the source waits for the stream's end); the source
        exports the session, the destination imports it under ``migration_token``, and only then the source frees
        it. Continue with ``EdgeClient(destination).resumed(reply.resume, migration_token, split_point)`` (the
        destination's description, relayed), or ``.resume(migration_token, split_point)`` when it is ``None``. A
        source with peers dials the peer the migration token names, at the address it knows for it, whatever
        ``destination`` says; ``reply.edge_id`` names the edge server that took the session.

        Raises
        ------
        EdgeUnavailableError
            The source died or could not reach the destination (if it died after the destination's
            acknowledgement, :meth:`resume` on the destination still finds the session).
        EdgeAuthError, InvalidMessageError
            The destination refused the migration (bad or replayed token, tampered state, model mismatch).
        """
        if not handle.closed:
            handle.detach(timeout_s, wait=False)  # the source waits (briefly) for the stream's end before exporting
        request = MigrateRequest(
            handle.session_id, handle.token, destination, migration_token, expect_model, handle.split_point
        )
        reply = MigrateReply.from_frame(self.call(METHOD_MIGRATE, request.to_bytes(), timeout_s))
        handle.moved()
        try:
            handle.wait_detached(timeout_s)  # the source exported after the stream's end: it has ended by now
        except EdgeError:
            pass  # the destination acknowledged the session: how its old stream ended no longer matters
        return reply

    def resume(self, migration_token: str, split_point: int, timeout_s: float | None = None) -> SessionHandle:
        """The session migrated to this edge server under ``migration_token``, ready to train.

        Raises
        ------
        SessionNotFoundError
            Nothing was migrated here with that token (the migration failed before the destination's ack).
        """
        reply = ResumeReply.from_frame(self.call(METHOD_RESUME, ResumeRequest(migration_token).to_bytes(), timeout_s))
        return self.resumed(reply, migration_token, split_point)

    def resumed(self, reply: ResumeReply, migration_token: str, split_point: int) -> SessionHandle:
        """The handle of a session migrated to this edge server, from its description: ``Resume``'s answer, or the
        one the source relays in its ``Migrate`` reply (no round trip)."""
        opened = OpenReply(reply.session_id, reply.edge_id, reply.input_shape, reply.expects_grad)
        return SessionHandle(
            self, opened, migration_token, split_point, last_batch=reply.last_batch, wire_dtype=self.wire_dtype
        )

    def train_stream(self, session_id: str, token: str) -> TrainStream:
        """Start the bidirectional training stream of session ``session_id`` (owned by ``token``).

        Low level: :meth:`SessionHandle.send` starts it on first use.
        """

        def start(requests: Iterator[bytes]) -> Any:
            return self._train(requests, metadata=((SESSION_KEY, session_id), (TOKEN_KEY, token)))

        return TrainStream(start, self.address, name=f"edgeflower-edge-reader-{session_id[:8]}")
