"""Start and stop a gRPC server the way every edgeflower service does (edge server, inference node, controller);
clients dial one with :func:`edgeflower.transport.channel.open_channel`.

Every service runs on gRPC's asyncio server in a thread of its own, so that a call costs a thread only while it is
being *worked on*, never while it waits for its request:

* **Half-open calls hold nothing.** Every method is registered server-side as a streaming method (the wire is the
  same for unary clients), so the handler starts as soon as a call opens and reads the first message itself under
  a deadline (:attr:`ServerOptions.first_message_s`). A call that never sends (a unary method called as a stream
  and left open) is answered ``DEADLINE_EXCEEDED`` and costs no worker thread meanwhile.
* **Bounded work, in two lanes.** Requests run in worker threads: data calls (sessions, training, deployments,
  forwards, predictions) in a pool of :attr:`ServerOptions.data_workers` threads, control calls (health, heartbeat,
  status) in a separate small pool, so data traffic can never starve heartbeats. A data call that finds every data
  worker busy for :attr:`ServerOptions.admission_wait_s` is refused with ``RESOURCE_EXHAUSTED`` (clients retry).
* **Bounded memory while waiting.** The request bodies of unary calls waiting for a worker (both lanes) count
  against :attr:`ServerOptions.max_waiting_bytes`; a data call that would take them past it is refused at once with
  ``RESOURCE_EXHAUSTED`` (a call that finds a free worker never waits and never counts; one waiting alone may be
  over it). Control calls (heartbeats, health) count but are never refused: a refused heartbeat would fail over a
  node that is only busy; their methods cap their size instead. A stream's messages wait in
  :meth:`RunningServer.run_data` without counting: one per stream, within the message limit.
* **Size limits before decoding.** A method may set its own request size limit (e.g. ``Open``, ``Deploy``), checked
  on the raw bytes before anything is parsed or allocated.
* **Plaintext only where asked for.** A non-loopback address needs TLS unless ``insecure`` is set, which logs a
  WARNING naming what travels in clear.

Failures map to status codes: an :class:`~edgeflower.transport.errors.EdgeError` aborts with its code, anything else
with ``INTERNAL`` (logged as an error). Stopping joins every thread the server started.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from typing import Any

import grpc
from flwr.common.logger import log

from edgeflower.transport.channel import check_plaintext, format_address, is_loopback, open_channel
from edgeflower.transport.errors import EdgeError
from edgeflower.transport.service import channel_options, identity
from edgeflower.transport.tls import TLSConfig

__all__ = [
    "MessageReader",
    "RunningServer",
    "ServerOptions",
    "ServerStoppingError",
    "StreamHandler",
    "Unary",
    "format_address",
    "is_loopback",
    "open_channel",
    "start_server",
    "trim_memory",
]

_END = object()


@dataclass(frozen=True)
class ServerOptions:
    """How a service bounds its work.

    Attributes
    ----------
    data_workers : int
        Threads (and concurrent calls) of the data lane.
    control_workers : int
        Threads of the control lane (health, heartbeats, status): never shared with data calls.
    first_message_s : float
        A call must deliver its (first) request message within this long (``DEADLINE_EXCEEDED`` otherwise).
    admission_wait_s : float
        How long a data call waits for a free worker before ``RESOURCE_EXHAUSTED``.
    max_concurrent_rpcs : int
        Open calls (including ones still waiting for their message) beyond which gRPC refuses new ones.
    max_waiting_bytes : int
        Request bytes that unary calls waiting for a worker may hold together; a data call that would exceed it is
        refused with ``RESOURCE_EXHAUSTED`` instead of waiting, unless it would wait alone (without it, only
        ``max_concurrent_rpcs`` times the message limit bounded them). Control calls count but are never refused.
    """

    data_workers: int = 8
    control_workers: int = 2
    first_message_s: float = 5.0
    admission_wait_s: float = 2.0
    max_concurrent_rpcs: int = 4096
    max_waiting_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        if min(self.data_workers, self.control_workers, self.max_concurrent_rpcs) < 1:
            raise ValueError("workers and max_concurrent_rpcs must be positive")
        if self.max_waiting_bytes < 0:
            raise ValueError("max_waiting_bytes must be non-negative")
        if not (self.first_message_s > 0 and self.admission_wait_s >= 0):
            raise ValueError("first_message_s must be positive and admission_wait_s non-negative")


@dataclass(frozen=True)
class Unary:
    """A unary method: ``fn(request_bytes, context) -> reply_bytes`` run in a worker thread.

    Attributes
    ----------
    fn : callable
        The handler; raises an :class:`EdgeError` to reject.
    control : bool
        Runs in the control lane (health, heartbeat, status).
    max_request_bytes : int or None
        Largest request accepted (checked on the raw bytes, before decoding); ``None``: gRPC's message limit.
    """

    fn: Callable[[bytes, Any], bytes]
    control: bool = False
    max_request_bytes: int | None = None


StreamHandler = Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]]
"""A bidirectional streaming method: an async generator over the request iterator and the aio context."""


class _Lane:
    def __init__(self, name: str, workers: int) -> None:
        self.pool = futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self.workers = workers
        self.slots: asyncio.Semaphore | None = None  # created on the loop


class RunningServer:
    """A started service: its asyncio gRPC server, its loop thread, its two worker lanes and its address."""

    def __init__(self, who: str, options: ServerOptions) -> None:
        self.who, self.options = who, options
        tag = f"edgeflower-{who.replace(' ', '-')}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{tag}-loop", daemon=True)
        self.data = _Lane(f"{tag}-data", options.data_workers)
        self.control = _Lane(f"{tag}-control", options.control_workers)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.address = ""
        self.refused = {"first_message": 0, "busy": 0, "too_large": 0, "waiting_bytes": 0}
        self.waiting_bytes = 0  # request bytes of unary calls waiting for a worker (changed only on the loop)
        self.stopping: asyncio.Event | None = None  # created on the loop

    # -- helpers for stream handlers -------------------------------------------------------------------------------
    async def next_message(self, iterator: AsyncIterator[bytes], timeout_s: float) -> bytes | None:
        """The first request message of a call, ``None`` if the call ends without one; ``TimeoutError`` after
        ``timeout_s`` (the read is abandoned: use only when the call is then aborted), :class:`ServerStoppingError`
        when the server stops."""
        reader = MessageReader(self, iterator)
        try:
            return await reader.next(timeout_s)
        except TimeoutError:
            reader.cancel()
            raise

    def reader(self, iterator: AsyncIterator[bytes]) -> MessageReader:
        """A reader of a stream's messages that can wait with a timeout without losing a message."""
        return MessageReader(self, iterator)

    async def run_data(self, fn: Callable[..., Any], *args: Any, wait: bool = True) -> Any:
        """Run ``fn(*args)`` in the data lane (waiting for a free worker; refused after the admission wait unless
        ``wait``)."""
        return await self._run(self.data, fn, args, wait)

    async def _run(self, lane: _Lane, fn: Callable[..., Any], args: tuple, wait: bool, size: int = 0) -> Any:
        assert lane.slots is not None
        if not lane.slots.locked():
            await lane.slots.acquire()  # a free worker: no wait, nothing held
        else:  # ``wait``: as long as it takes (control calls, stream steps), else up to the admission wait
            await self._wait_admitted(lane, size, None if wait else self.options.admission_wait_s)
        fut = self._loop.run_in_executor(lane.pool, fn, *args)
        slots = lane.slots

        def done(f: asyncio.Future) -> None:  # even if the call was cancelled meanwhile
            slots.release()
            if not f.cancelled():
                f.exception()  # retrieved: a cancelled call's late failure is not "never retrieved"

        fut.add_done_callback(done)
        return await asyncio.shield(fut)

    async def _wait_admitted(self, lane: _Lane, size: int, timeout_s: float | None) -> None:
        """Wait up to ``timeout_s`` (``None``: as long as it takes) for a worker of ``lane``, the ``size`` request
        bytes counted against :attr:`ServerOptions.max_waiting_bytes` meanwhile."""
        assert lane.slots is not None
        limit = self.options.max_waiting_bytes
        over = size and self.waiting_bytes and self.waiting_bytes + size > limit  # alone, a call may be over it
        if over and timeout_s is not None:  # control calls (heartbeats) are never refused: they count and wait
            self.refused["waiting_bytes"] += 1
            raise _RefusalError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.who} is busy: all {lane.workers} workers in use and the calls waiting for one hold "
                f"{self.waiting_bytes} of at most {limit} bytes (this one has {size})",
            )
        self.waiting_bytes += size
        try:
            await asyncio.wait_for(lane.slots.acquire(), timeout_s)
        except TimeoutError:
            self.refused["busy"] += 1
            raise _RefusalError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.who} is busy: all {lane.workers} workers in use"
            ) from None
        finally:
            self.waiting_bytes -= size

    def _trim_soon(self) -> None:
        """Give the memory of a refused oversized request back to the OS (soon, once the buffers are freed)."""
        self._loop.call_later(0.05, trim_memory)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the server's loop (thread-safe)."""
        self._loop.call_soon_threadsafe(fn)

    # -- handlers --------------------------------------------------------------------------------------------------
    def unary_handler(self, name: str, method: Unary) -> Callable[[AsyncIterator[bytes], Any], Awaitable[bytes]]:
        lane = self.control if method.control else self.data

        async def handler(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
            try:
                try:
                    raw = await self.next_message(request_iterator, self.options.first_message_s)
                except ServerStoppingError as exc:
                    raise _RefusalError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
                except TimeoutError:
                    self.refused["first_message"] += 1
                    raise _RefusalError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no request message within {self.options.first_message_s:g} s",
                    ) from None
                if raw is None:
                    raise _RefusalError(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without a request message")
                if method.max_request_bytes is not None and len(raw) > method.max_request_bytes:
                    self.refused["too_large"] += 1
                    size, raw = len(raw), b""
                    self._trim_soon()
                    raise _RefusalError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{name} message of {size} bytes is larger than the limit of {method.max_request_bytes} bytes",
                    )
                return await self._run(lane, _invoke, (method.fn, raw, context), method.control, len(raw))
            except _RefusalError as exc:
                code, detail = exc.code, exc.detail
            except EdgeError as exc:
                log(WARNING, "%s: %s rejected: %s %s", self.who, name, exc.code.name, exc.detail)
                code, detail = exc.code, exc.detail
            except Exception as exc:
                log(ERROR, "%s: %s failed: %r", self.who, name, exc)
                code, detail = grpc.StatusCode.INTERNAL, f"{self.who} error in {name}: {type(exc).__name__}: {exc}"
            await context.abort(code, detail)
            raise AssertionError("unreachable")  # pragma: no cover - abort raises

        return handler

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(
        self, handlers: Mapping[str, Any], service: str, host: str, port: int, max_message_bytes: int, tls: Any
    ) -> None:
        """Start the loop thread, bind ``host:port`` and serve ``handlers`` (see :func:`start_server`).

        Raises
        ------
        OSError
            When the address cannot be bound.
        """
        self._thread.start()
        coro = self._start(handlers, service, host, port, max_message_bytes, tls)
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    async def _start(
        self, handlers: Mapping[str, Any], service: str, host: str, port: int, max_message_bytes: int, tls: Any
    ) -> None:
        self.stopping = asyncio.Event()
        self.data.slots = asyncio.Semaphore(self.data.workers)
        self.control.slots = asyncio.Semaphore(self.control.workers)
        server = grpc.aio.server(
            options=channel_options(max_message_bytes, server=True),
            maximum_concurrent_rpcs=self.options.max_concurrent_rpcs,
        )
        kw = {"request_deserializer": identity, "response_serializer": identity}
        generic = {}
        for name, handler in handlers.items():
            if isinstance(handler, Unary):
                generic[name] = grpc.stream_unary_rpc_method_handler(self.unary_handler(name, handler), **kw)
            else:
                generic[name] = grpc.stream_stream_rpc_method_handler(handler, **kw)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, generic),))
        target = format_address(host, port)
        reason = ""
        try:
            if tls is not None:
                bound = server.add_secure_port(target, tls.server_credentials())
            else:
                bound = server.add_insecure_port(target)
        except RuntimeError as exc:
            bound, reason = 0, str(exc)
        if not bound:
            raise OSError(f"{self.who} cannot bind {target} {reason}".strip())
        await server.start()
        self.server, self.port, self.address = server, bound, format_address(host, bound)

    def stop(self, grace_s: float, before_join: Callable[[], None] | None = None) -> None:
        """Stop serving (open calls get ``grace_s``), call ``before_join`` (e.g. drop sessions), join every thread."""
        if self.server is not None and self._thread.is_alive():
            if self.stopping is not None:
                self._loop.call_soon_threadsafe(self.stopping.set)  # streams end with UNAVAILABLE at once
            try:
                asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self._loop).result(grace_s + 30)
            except (futures.TimeoutError, RuntimeError) as exc:  # pragma: no cover - defensive
                log(WARNING, "%s: stop did not complete: %r", self.who, exc)
        if before_join is not None:
            before_join()
        self._shutdown()

    def _shutdown(self) -> None:
        self.data.pool.shutdown(wait=True)
        self.control.pool.shutdown(wait=True)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self.server = None
        self._loop.close()
        gc.collect()  # frees gRPC's asyncio poller thread together with the server


class ServerStoppingError(Exception):
    """The server is stopping: a stream handler should end its call (``UNAVAILABLE``)."""


class MessageReader:
    """Reads a request stream one message at a time; a wait that times out keeps the read pending (no message is
    ever lost to a timeout), and a wait ends with :class:`ServerStoppingError` as soon as the server stops."""

    def __init__(self, server: RunningServer, iterator: AsyncIterator[bytes]) -> None:
        self._server, self._iterator = server, iterator
        self._pending: asyncio.Future | None = None

    async def next(self, timeout_s: float) -> bytes | None:
        """The next message, ``None`` at the end of the stream.

        Raises
        ------
        TimeoutError
            No message within ``timeout_s`` (call again to keep waiting for it).
        ServerStoppingError
            The server is stopping.
        """
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._iterator, _END))
            self._pending.add_done_callback(_retrieve)  # a read failing after the call ended is no error
        stopping = self._server.stopping
        assert stopping is not None
        waiter = asyncio.ensure_future(stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {self._pending, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self._pending in done:
            item, self._pending = self._pending.result(), None
            return None if item is _END else item  # type: ignore[return-value]
        if stopping.is_set():
            self.cancel()
            raise ServerStoppingError(f"{self._server.who} is stopping")
        raise TimeoutError

    def cancel(self) -> None:
        """Abandon a pending read (the call is ending)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


_trim_lock = threading.Lock()
_last_trim = [-1.0]


def trim_memory(min_interval_s: float = 1.0) -> None:
    """``malloc_trim(0)`` where glibc has it, at most once per ``min_interval_s``: the freed buffers of refused
    oversized requests and of dropped sessions go back to the OS instead of growing the process."""
    now = time.monotonic()
    with _trim_lock:
        if now - _last_trim[0] < min_interval_s:
            return
        _last_trim[0] = now
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class _RefusalError(Exception):
    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def _invoke(fn: Callable[[bytes, Any], bytes], raw: bytes, context: Any) -> bytes:
    return fn(raw, context)


def start_server(
    service: str,
    handlers: Mapping[str, Unary | StreamHandler],
    host: str,
    port: int,
    max_message_bytes: int,
    tls: TLSConfig | None = None,
    who: str = "server",
    options: ServerOptions | None = None,
    insecure: bool = False,
    in_clear: str = "tokens and tensors",
) -> RunningServer:
    """Bind ``host:port`` and serve ``handlers`` (method name -> :class:`Unary` or a stream handler).

    Raises
    ------
    OSError
        When the address cannot be bound (in use, not an address of this machine).
    ValueError
        For plaintext on a non-loopback address without ``insecure`` (see :func:`check_plaintext`).
    """
    check_plaintext(host, tls, insecure, who, in_clear)
    running = RunningServer(who, options or ServerOptions())
    try:
        running.start(handlers, service, host, port, max_message_bytes, tls)
    except BaseException:
        running.stop(0)
        raise
    log(INFO, "%s serving on %s (%s)", who, running.address, "TLS" if tls else "plaintext")
    return running
