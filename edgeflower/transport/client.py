"""The device side of the offload channel: :class:`EdgeClient` and :class:`SessionHandle`.

Typical sequential split training (one micro-batch per batch)::

    with EdgeClient("127.0.0.1:50051") as client:
        session = client.open_session(token, model.spec, k, tail.state_dict(), OptimizerSettings(0.01, 0.9))
        for b, (x, y) in enumerate(batches):
            act = head(x)
            result = session.step(act.detach(), y, batch=b)
            act.backward(result.grad)
            head_optimizer.step()
        tail_state, metrics = session.close()

All per-batch traffic of a session uses one long-lived bidirectional gRPC stream, started by the first
:meth:`SessionHandle.send`. :meth:`SessionHandle.send` does not wait, so a pipelined client can keep several
micro-batches in flight and collect the results, in order, with :meth:`SessionHandle.recv`. Every failure raises a
subclass of :class:`~edgeflower.transport.errors.EdgeError`; :class:`~edgeflower.transport.errors.EdgeUnavailableError`
means the edge server is gone (fall back to local training).
"""

from __future__ import annotations

import collections
import queue
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import grpc
import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES, Limits, decode_frame, encode_frame
from edgeflower.transport.errors import (
    EdgeError,
    EdgeOverloadedError,
    EdgeServerError,
    EdgeTimeoutError,
    EdgeUnavailableError,
    InvalidMessageError,
    SessionStateError,
    from_rpc_error,
)
from edgeflower.transport.grpc_server import open_channel
from edgeflower.transport.messages import (
    END_KIND,
    CloseReply,
    CloseRequest,
    HealthInfo,
    OpenReply,
    OpenRequest,
    OptimizerSettings,
    SessionMetrics,
    StepRequest,
    StepResult,
)
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

__all__ = ["EdgeClient", "SessionHandle"]

_END = object()


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
    ) -> None:
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

        Returns
        -------
        SessionHandle

        Raises
        ------
        EdgeAuthError
            Bad, expired or foreign token.
        InvalidMessageError
            Bad spec, split point, optimizer settings or tail state.
        EdgeOverloadedError
            The server has too many sessions (after the retries).
        EdgeUnavailableError
            The server cannot be reached (after the retries).
        """
        request = OpenRequest(token, spec, split_point, optimizer, dict(tail_state))
        frame = self.call_retrying(METHOD_OPEN, request.to_bytes(self.limits), timeout_s)
        return SessionHandle(self, OpenReply.from_frame(frame), token, split_point)

    def migrate(
        self,
        handle: SessionHandle,
        destination: str,
        migration_token: str,
        expect_model: ModelSpec | None = None,
        timeout_s: float | None = None,
    ) -> MigrateReply:
        """Move ``handle``'s session from this edge server to ``destination`` (FedFly).

        The handle's training stream is detached first (at a batch boundary: nothing may be pending); the source
        exports the session, the destination imports it under ``migration_token``, and only then the source frees
        it. Continue with ``EdgeClient(destination).resume(migration_token, split_point)``.

        Raises
        ------
        EdgeUnavailableError
            The source died or could not reach the destination (if it died after the destination's
            acknowledgement, :meth:`resume` on the destination still finds the session).
        EdgeAuthError, InvalidMessageError
            The destination refused the migration (bad or replayed token, tampered state, model mismatch).
        """
        if not handle.closed:
            handle.detach(timeout_s)
        request = MigrateRequest(
            handle.session_id, handle._token, destination, migration_token, expect_model, handle.split_point
        )
        return MigrateReply.from_frame(self.call(METHOD_MIGRATE, request.to_bytes(), timeout_s))

    def resume(self, migration_token: str, split_point: int, timeout_s: float | None = None) -> SessionHandle:
        """The session migrated to this edge server under ``migration_token``, ready to train.

        Raises
        ------
        SessionNotFoundError
            Nothing was migrated here with that token (the migration failed before the destination's ack).
        """
        reply = ResumeReply.from_frame(self.call(METHOD_RESUME, ResumeRequest(migration_token).to_bytes(), timeout_s))
        opened = OpenReply(reply.session_id, reply.edge_id, reply.input_shape, reply.expects_grad)
        handle = SessionHandle(self, opened, migration_token, split_point)
        handle.last_batch = reply.last_batch
        return handle


class SessionHandle:
    """One open session on an edge server (returned by :meth:`EdgeClient.open_session`).

    :meth:`send` and :meth:`recv` may be called from two different threads (a sender and a receiver); results come
    back in the order the steps were sent.

    Attributes
    ----------
    session_id : str
        Server-side session id.
    edge_id : str
        The edge server's id.
    split_point : int
        The session's split point.
    input_shape : tuple of int
        Shape of one sample of the activations the server expects.
    expects_grad : bool
        Whether results carry activation gradients (``split_point > 0``).
    owns_client : bool
        Close the client's channel when the session is closed or aborted (set for a handle whose client was opened
        just for it, e.g. on a migration's destination).
    """

    def __init__(self, client: EdgeClient, reply: OpenReply, token: str, split_point: int) -> None:
        self._client = client
        self.owns_client = False
        self._token = token
        self.session_id = reply.session_id
        self.edge_id = reply.edge_id
        self.split_point = split_point
        self.input_shape = tuple(reply.input_shape)
        self.expects_grad = reply.expects_grad
        self._lock = threading.Lock()
        self._expected: collections.deque[tuple[int, int, torch.Size, torch.dtype]] = collections.deque()
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._replies: queue.Queue[Any] = queue.Queue()
        self._call: Any = None
        self._reader: threading.Thread | None = None
        self._error: EdgeError | None = None
        self._closed = False
        self.last_batch = -1  # on a resumed (migrated) session: the last batch the source completed

    # -- state ---------------------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Steps sent whose result has not been received yet."""
        with self._lock:
            return len(self._expected)

    @property
    def closed(self) -> bool:
        """Whether the session was closed or aborted."""
        return self._closed

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise SessionStateError(f"session {self.session_id} is closed", address=self._client.address)

    # -- stream plumbing ------------------------------------------------------------------------------------------
    def _request_iter(self) -> Iterator[bytes]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._replies.put(reply)
            self._replies.put(_END)
        except grpc.RpcError as exc:
            self._replies.put(from_rpc_error(exc, self._client.address))
        except Exception as exc:
            self._replies.put(EdgeServerError(f"stream reader failed: {exc!r}", address=self._client.address))
        finally:
            self._requests.put(None)  # unblock gRPC's request-consuming thread

    def _ensure_stream(self) -> None:
        if self._call is not None:
            return
        metadata = ((SESSION_KEY, self.session_id), (TOKEN_KEY, self._token))
        self._call = self._client._train(self._request_iter(), metadata=metadata)
        self._reader = threading.Thread(
            target=self._read, name=f"edgeflower-edge-reader-{self.session_id[:8]}", daemon=True
        )
        self._reader.start()

    def _fail(self, error: EdgeError) -> EdgeError:
        self._error = error
        self._shutdown_stream()
        return error

    def _shutdown_stream(self, timeout_s: float = 5.0) -> None:
        if self._call is not None:
            self._call.cancel()
        self._requests.put(None)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout_s)

    # -- steps ----------------------------------------------------------------------------------------------------
    def send_raw(self, frame: bytes, expect: tuple[int, int, torch.Size, torch.dtype] | None = None) -> None:
        """Low level: queue an already encoded frame on the training stream (for tests and proxies).

        ``expect`` is ``(batch, micro, activation shape, activation dtype)`` of the result to check it against.
        """
        self._check_usable()
        with self._lock:
            self._ensure_stream()
            self._expected.append(expect or (-1, -1, torch.Size(), torch.float32))
            self._requests.put(frame)

    def send(
        self,
        activations: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch: int,
        micro: int = 0,
        num_micro: int = 1,
        batch_size: int | None = None,
    ) -> None:
        """Queue one (micro-)batch of activations and labels without waiting for its result.

        Parameters
        ----------
        activations : torch.Tensor
            The head's output ``(n, *input_shape)``, detached (float32, float16 or bfloat16).
        labels : torch.Tensor
            Class labels ``(n,)``.
        batch : int
            Batch index (increasing within the session).
        micro : int
            Micro-batch index within the batch.
        num_micro : int
            Micro-batches in this batch; the server steps its optimizer after the last one.
        batch_size : int, optional
            Samples in the whole batch (default: ``n`` when ``num_micro == 1``).

        Raises
        ------
        InvalidMessageError
            Locally detected bad input (wrong shape, dtype, size); nothing is sent.
        EdgeError
            A previous failure of this session's stream.
        """
        self._check_usable()
        if batch_size is None:
            if num_micro != 1:
                raise InvalidMessageError("batch_size is required when num_micro > 1")
            batch_size = int(labels.shape[0]) if labels.dim() else 0
        if tuple(activations.shape[1:]) != self.input_shape:
            raise InvalidMessageError(
                f"activations of shape {list(activations.shape)} do not match the session's input shape "
                f"[n, {', '.join(map(str, self.input_shape))}]"
            )
        request = StepRequest(activations.detach(), labels, batch, micro, num_micro, batch_size)
        frame = request.to_bytes(self._client.limits)
        self.send_raw(frame, (batch, micro, activations.shape, activations.dtype))

    def recv(self, timeout_s: float | None = None) -> StepResult:
        """Wait for the result of the oldest step sent and not yet received.

        Raises
        ------
        EdgeTimeoutError
            No result within ``timeout_s`` (default: the client's); the stream is cancelled.
        EdgeUnavailableError
            The edge server went away.
        EdgeError
            The server rejected the step (the stream is then over; the server dropped the session).
        """
        self._check_usable()
        with self._lock:
            if not self._expected:
                raise SessionStateError("recv() without a pending step", address=self._client.address)
        timeout = timeout_s or self._client.timeout_s
        try:
            item = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise self._fail(
                EdgeTimeoutError(f"no step result within {timeout:.1f} s", address=self._client.address)
            ) from None
        if isinstance(item, EdgeError):
            raise self._fail(item)
        if item is _END:
            raise self._fail(EdgeServerError("the server ended the stream early", address=self._client.address))
        try:
            result = StepResult.from_frame(decode_frame(item, self._client.limits))
        except InvalidMessageError as exc:
            raise self._fail(exc) from None
        with self._lock:
            batch, micro, shape, dtype = self._expected.popleft()
        if batch >= 0:
            self._check_result(result, batch, micro, shape, dtype)
        return result

    def _check_result(self, result: StepResult, batch: int, micro: int, shape: torch.Size, dtype: torch.dtype) -> None:
        problem = ""
        if (result.batch, result.micro) != (batch, micro):
            problem = f"result for batch {result.batch}/{result.micro}, expected {batch}/{micro}"
        elif self.expects_grad and (result.grad is None or result.grad.shape != shape or result.grad.dtype != dtype):
            got = None if result.grad is None else (list(result.grad.shape), result.grad.dtype)
            problem = f"gradient {got} does not match the activations {list(shape)} {dtype}"
        elif result.grad is not None and not bool(torch.isfinite(result.grad).all()):
            problem = "the gradient contains NaN or Inf"
        if problem:
            raise self._fail(InvalidMessageError(problem, address=self._client.address))

    def step(
        self,
        activations: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch: int,
        micro: int = 0,
        num_micro: int = 1,
        batch_size: int | None = None,
        timeout_s: float | None = None,
    ) -> StepResult:
        """:meth:`send` then :meth:`recv`: one synchronous request/response; needs no step in flight.

        Returns
        -------
        StepResult
            ``.grad`` is the activation gradient (``None`` for ``split_point == 0``), ``.loss`` the micro-batch's
            mean loss, ``.server_s`` / ``.compute_s`` the server's time on it.
        """
        self._check_usable()
        if self.pending:
            raise SessionStateError(
                f"step() with {self.pending} results pending; use recv()", address=self._client.address
            )
        self.send(activations, labels, batch=batch, micro=micro, num_micro=num_micro, batch_size=batch_size)
        return self.recv(timeout_s)

    # -- end ------------------------------------------------------------------------------------------------------
    def close(self, timeout_s: float | None = None) -> tuple[dict[str, torch.Tensor], SessionMetrics]:
        """End the stream, close the session and return ``(tail_state_dict, metrics)``.

        Raises
        ------
        SessionStateError
            If results are still pending (receive them, or :meth:`abort`).
        EdgeError
            Any failure of the stream or of the close call (the session is then aborted).
        """
        self._check_usable()
        if self.pending:
            raise SessionStateError(
                f"close() with {self.pending} step results not received; recv() them or abort()",
                address=self._client.address,
            )
        timeout = timeout_s or self._client.timeout_s
        try:
            self._end_stream(timeout)
            frame = self._client.call(METHOD_CLOSE, CloseRequest(self.session_id, self._token).to_bytes(), timeout)
            reply = CloseReply.from_frame(frame)
        except EdgeError as exc:
            raise self._fail(exc) from None
        finally:
            self._release_client()
        self._closed = True
        return reply.state, reply.metrics

    def _release_client(self) -> None:
        if self.owns_client:
            self.owns_client = False
            self._client.close()

    def _end_stream(self, timeout: float) -> None:
        """End the training stream cleanly (the session stays open on the server)."""
        if self._call is None:
            return
        self._requests.put(encode_frame(END_KIND))  # the server ends the stream cleanly after this
        self._requests.put(None)  # half-close
        try:
            item = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise EdgeTimeoutError("the stream did not end in time", address=self._client.address) from None
        if isinstance(item, EdgeError):
            raise item
        if item is not _END:
            raise EdgeServerError("unexpected step result after the last step", address=self._client.address)
        if self._reader is not None:
            self._reader.join(timeout)

    def detach(self, timeout_s: float | None = None) -> None:
        """End the training stream but keep the session on the server (e.g. to migrate it).

        The handle is unusable afterwards; the session lives on until it is closed, migrated or reaped.

        Raises
        ------
        SessionStateError
            If step results are still pending.
        """
        self._check_usable()
        if self.pending:
            raise SessionStateError(f"detach() with {self.pending} step results pending", address=self._client.address)
        try:
            self._end_stream(timeout_s or self._client.timeout_s)
        except EdgeError as exc:
            raise self._fail(exc) from None
        self._closed = True

    def abort(self) -> None:
        """Give the session up without fetching the tail: cancel the stream (the server drops the session).

        Never raises; safe to call more than once and after a failure.
        """
        if self._closed:
            self._release_client()
            return
        self._closed = True
        try:
            if self._call is not None:
                self._shutdown_stream()
                return
            try:  # no stream yet: close it explicitly, best effort
                self._client.call(METHOD_CLOSE, CloseRequest(self.session_id, self._token).to_bytes(), 2.0)
            except EdgeError:
                pass
        finally:
            self._release_client()
