"""One open session, device side: :class:`SessionHandle`, returned by
:meth:`~edgeflower.transport.client.EdgeClient.open_session` and :meth:`~edgeflower.transport.client.EdgeClient.resume`.

The handle sends steps on the session's :class:`~edgeflower.transport.stream.TrainStream` (started by the first
:meth:`SessionHandle.send`), checks every result against the step it answers, and ends the session: close (fetch
the trained tail), detach (keep it on the server, e.g. to migrate it) or abort.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

import torch

from edgeflower.transport.codec import decode_frame
from edgeflower.transport.errors import EdgeError, InvalidMessageError, SessionStateError
from edgeflower.transport.fields import all_finite
from edgeflower.transport.service import METHOD_CLOSE
from edgeflower.transport.session_messages import CloseReply, CloseRequest, OpenReply, SessionMetrics
from edgeflower.transport.step_messages import StepRequest, StepResult
from edgeflower.transport.stream import TrainStream
from edgeflower.transport.wire import WireForm, check_wire_dtype

if TYPE_CHECKING:
    from edgeflower.transport.client import EdgeClient

__all__ = ["SessionHandle"]

Expectation = tuple[int, int, torch.Size, torch.dtype]
"""``(batch, micro, activation shape, activation dtype)`` of a step whose result is awaited."""


class SessionHandle:
    """One open session on an edge server (returned by :meth:`EdgeClient.open_session`).

    :meth:`send` and :meth:`recv` may be called from two different threads (a sender and a receiver); results come
    back in the order the steps were sent.

    Parameters
    ----------
    client : EdgeClient
        The connection to the session's edge server.
    reply : OpenReply
        The server's answer to the open (or resume).
    token : str
        The token that owns the session.
    split_point : int
        The session's split point.
    last_batch : int
        On a resumed (migrated) session, the last batch the source completed (``-1``: none).
    wire_dtype : str
        How activations go up and gradients come down (:mod:`~edgeflower.transport.wire`); results are checked to
        come back in it.

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
    last_batch : int
        On a resumed (migrated) session: the last batch the source completed (``-1`` otherwise).
    wire_dtype : str
        The session's wire format.
    owns_client : bool
        Close the client's channel when the session is closed or aborted (set for a handle whose client was opened
        just for it, e.g. on a migration's destination).
    """

    def __init__(
        self,
        client: EdgeClient,
        reply: OpenReply,
        token: str,
        split_point: int,
        *,
        last_batch: int = -1,
        wire_dtype: str = "float32",
    ) -> None:
        self._client = client
        self.wire_dtype = check_wire_dtype(wire_dtype)
        self.owns_client = False
        self._token = token
        self.session_id = reply.session_id
        self.edge_id = reply.edge_id
        self.split_point = split_point
        self.input_shape = tuple(reply.input_shape)
        self.expects_grad = reply.expects_grad
        self.last_batch = last_batch
        self._lock = threading.Lock()
        self._expected: collections.deque[Expectation] = collections.deque()
        self._stream: TrainStream | None = None
        self._error: EdgeError | None = None
        self._closed = False
        self._end_pending = False  # detach(wait=False) sent the end frame; wait_detached() waits for the server
        self._left_open = False  # the stream ended cleanly or was detached: the server keeps the session until told

    # -- state ---------------------------------------------------------------------------------------------------
    @property
    def client(self) -> EdgeClient:
        """The connection to the edge server the session lives on."""
        return self._client

    @property
    def token(self) -> str:
        """The token that owns the session (needed to close or migrate it)."""
        return self._token

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

    def _fail(self, error: EdgeError) -> EdgeError:
        self._error = error
        if self._stream is not None:
            self._stream.cancel()
        return error

    # -- steps ----------------------------------------------------------------------------------------------------
    def send_raw(self, frame: bytes, expect: Expectation | None = None) -> None:
        """Low level: queue an already encoded frame on the training stream (for tests and proxies).

        ``expect`` is ``(batch, micro, activation shape, activation dtype)`` of the result to check it against.
        """
        self._check_usable()
        if self._end_pending:  # ended ahead (end_stream): a new stream once the server ended that one
            self.wait_detached()
            self._stream = None
        with self._lock:
            if self._stream is None:
                self._stream = self._client.train_stream(self.session_id, self._token)
                self._left_open = False  # cancelling the new stream drops the session
            self._expected.append(expect or (-1, -1, torch.Size(), torch.float32))
            self._stream.put(frame)

    def send(
        self,
        activations: torch.Tensor | WireForm,
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
        activations : torch.Tensor or WireForm
            The head's output ``(n, *input_shape)``, detached (float32, float16 or bfloat16), sent in the session's
            wire format; or already encoded in it (:meth:`WireForm.of`; sent as it is, not encoded again).
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
        wire = self.wire_dtype
        if not isinstance(activations, WireForm):  # a form in another format is refused by StepRequest.to_bytes
            activations = activations.detach()
        shape, dtype = activations.shape, activations.dtype
        if tuple(shape[1:]) != self.input_shape:
            raise InvalidMessageError(
                f"activations of shape {list(shape)} do not match the session's input shape "
                f"[n, {', '.join(map(str, self.input_shape))}]"
            )
        request = StepRequest(activations, labels, batch, micro, num_micro, batch_size, wire)
        frame = request.to_bytes(self._client.limits)
        grad_dtype = dtype if wire == "float32" else torch.float32  # a compressed gradient decodes so
        self.send_raw(frame, (batch, micro, shape, grad_dtype))

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
            if not self._expected or self._stream is None:
                raise SessionStateError("recv() without a pending step", address=self._client.address)
            stream = self._stream
        try:
            frame = decode_frame(stream.recv(timeout_s or self._client.timeout_s), self._client.limits)
            result = StepResult.from_frame(frame, self._client.limits)
        except EdgeError as exc:  # the stream's failure, or a malformed result
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
        elif result.wire != self.wire_dtype:
            problem = f"gradient sent as {result.wire}, the session's wire dtype is {self.wire_dtype}"
        elif self.expects_grad and (result.grad is None or result.grad.shape != shape or result.grad.dtype != dtype):
            got = None if result.grad is None else (list(result.grad.shape), result.grad.dtype)
            problem = f"gradient {got} does not match the activations {list(shape)} {dtype}"
        elif result.grad is not None and not all_finite(result.grad):
            problem = "the gradient contains NaN or Inf"
        if problem:
            raise self._fail(InvalidMessageError(problem, address=self._client.address))

    def step(
        self,
        activations: torch.Tensor | WireForm,
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
            if self._end_pending:
                self.wait_detached(timeout)
            elif self._stream is not None:
                self._stream.end(timeout)
            frame = self._client.call(METHOD_CLOSE, CloseRequest(self.session_id, self._token).to_bytes(), timeout)
            reply = CloseReply.from_frame(frame)
        except EdgeError as exc:
            raise self._fail(exc) from None
        finally:
            self._release_client()
        self._closed, self._left_open = True, False
        return reply.state, reply.metrics

    def _release_client(self) -> None:
        if self.owns_client:
            self.owns_client = False
            self._client.close()

    def detach(self, timeout_s: float | None = None, *, wait: bool = True) -> None:
        """End the training stream but keep the session on the server (e.g. to migrate it).

        The handle is unusable afterwards; the session lives on until it is closed, migrated or reaped. With
        ``wait=False`` the ``end`` frame goes up and the call returns at once (a migration asks for the move
        meanwhile); :meth:`wait_detached` then waits for the server's end of the stream.

        Raises
        ------
        SessionStateError
            If step results are still pending.
        """
        self._check_usable()
        if self.pending:
            raise SessionStateError(f"detach() with {self.pending} step results pending", address=self._client.address)
        self._closed = self._left_open = True
        if self._stream is None:
            return
        self._send_end()
        if wait:
            self.wait_detached(timeout_s)

    def end_stream(self, then_migrate: bool = False) -> None:
        """Send the training stream's ``end`` frame now, without waiting (once per stream).

        The session stays open: the edge server ends the stream meanwhile (e.g. while the device finishes its last
        batch before a scheduled move), the next step starts a new stream, and :meth:`close`, :meth:`detach` and a
        migration wait for this one's end. With ``then_migrate`` the edge server also exports the session as the
        stream ends, and a migration that follows without another step sends that state (no export on its path).

        Raises
        ------
        SessionStateError
            If the handle is closed or step results are still pending.
        """
        self._check_usable()
        if self.pending:
            raise SessionStateError(f"end_stream() with {self.pending} results pending", address=self._client.address)
        self._send_end(then_migrate)

    def _send_end(self, then_migrate: bool = False) -> None:
        if self._stream is not None and not self._end_pending:
            self._stream.send_end(then_migrate)
            self._end_pending = self._left_open = True

    def wait_detached(self, timeout_s: float | None = None) -> None:
        """After :meth:`detach` or :meth:`end_stream`, wait for the server to end the training stream (at once if it
        did already).

        Raises
        ------
        EdgeError
            The stream failed or did not end within ``timeout_s``.
        """
        if self._stream is None or not self._end_pending:
            return
        self._end_pending = False
        try:
            self._stream.wait_end(timeout_s or self._client.timeout_s)
        except EdgeError as exc:
            raise self._fail(exc) from None
        self._stream = None  # it ended: the next step starts a new one, close() goes straight to Close

    def abort(self) -> None:
        """Give the session up without fetching the tail: cancel the stream (the server drops the session), or close
        it explicitly (best effort) when it has no stream, or its stream ended cleanly or was detached and no move took
        it away (:meth:`moved`), e.g. after a failed migration.

        Never raises; safe to call more than once and after a failure.
        """
        if self._closed and not self._left_open:
            self._release_client()
            return
        self._closed = True
        try:
            if self._stream is not None:
                self._stream.cancel()  # after a clean end this only stops its reader
                if not self._left_open:
                    return
            try:
                self._client.call(METHOD_CLOSE, CloseRequest(self.session_id, self._token).to_bytes(), 2.0)
            except EdgeError:
                pass
        finally:
            self._left_open = False
            self._release_client()

    def moved(self) -> None:
        """The session left this edge server (migrated): :meth:`abort` has nothing left to close here."""
        self._left_open = False
