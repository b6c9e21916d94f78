"""One session's bidirectional training stream on the device side: :class:`TrainStream`.

Frames go up through a queue that gRPC consumes on its own thread; a reader thread puts every reply (or the error
that ended the stream) on a second queue, so the sender never waits for results and a pipelined device can keep
several micro-batches in flight. :class:`~edgeflower.transport.handle.SessionHandle` owns one (started by
:meth:`~edgeflower.transport.client.EdgeClient.train_stream`) and adds order and checks on top.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from edgeflower.transport.errors import EdgeError, EdgeServerError, EdgeTimeoutError, from_rpc_error
from edgeflower.transport.step_messages import end_frame

__all__ = ["TrainStream"]

_END = object()  # the reader's mark: the server ended the stream


class TrainStream:
    """The frames of one session's ``Train`` stream, up and down.

    Parameters
    ----------
    start : callable
        ``start(request_iterator) -> call``: starts the gRPC stream-stream call on the session's channel (with its
        metadata) and returns the call, an iterator of reply frames that can be cancelled.
    address : str
        The edge server's address (for error messages).
    name : str
        Name of the reader thread.
    """

    def __init__(self, start: Callable[[Iterator[bytes]], Any], address: str, name: str) -> None:
        self.address = address
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._replies: queue.Queue[Any] = queue.Queue()
        self._call = start(self._request_iter())
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

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
            self._replies.put(from_rpc_error(exc, self.address))
        except Exception as exc:
            self._replies.put(EdgeServerError(f"stream reader failed: {exc!r}", address=self.address))
        finally:
            self._requests.put(None)  # unblock gRPC's request-consuming thread

    def put(self, frame: bytes) -> None:
        """Queue one encoded frame to go up (never blocks)."""
        self._requests.put(frame)

    def recv(self, timeout_s: float) -> bytes:
        """The next reply frame, undecoded.

        Raises
        ------
        EdgeTimeoutError
            No reply within ``timeout_s``.
        EdgeError
            The stream failed (the server's error, translated) or the server ended it.
        """
        try:
            item = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise EdgeTimeoutError(f"no step result within {timeout_s:.1f} s", address=self.address) from None
        if isinstance(item, EdgeError):
            raise item
        if item is _END:
            raise EdgeServerError("the server ended the stream early", address=self.address)
        return item

    def end(self, timeout_s: float) -> None:
        """End the stream cleanly: send the ``end`` frame, half-close, and wait for the server to end it too.

        Every reply must have been received before (a reply still coming is an error).

        Raises
        ------
        EdgeTimeoutError
            The server did not end the stream within ``timeout_s``.
        EdgeError
            The stream failed, or a step result came instead of the end.
        """
        self.send_end()
        self.wait_end(timeout_s)

    def send_end(self, then_migrate: bool = False) -> None:
        """Send the ``end`` frame (:func:`~edgeflower.transport.step_messages.end_frame`) and half-close, without
        waiting (then :meth:`wait_end`)."""
        self._requests.put(end_frame(then_migrate))  # the server ends the stream cleanly after this
        self._requests.put(None)  # half-close

    def wait_end(self, timeout_s: float) -> None:
        """Wait for the server to end the stream after :meth:`send_end` (raises as :meth:`end`)."""
        try:
            item = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            raise EdgeTimeoutError("the stream did not end in time", address=self.address) from None
        if isinstance(item, EdgeError):
            raise item
        if item is not _END:
            raise EdgeServerError("unexpected step result after the last step", address=self.address)
        self._reader.join(timeout_s)

    def cancel(self, timeout_s: float = 5.0) -> None:
        """Cancel the call (the server drops the session) and wait up to ``timeout_s`` for the reader to stop."""
        self._call.cancel()
        self._requests.put(None)
        if self._reader is not threading.current_thread():
            self._reader.join(timeout_s)
