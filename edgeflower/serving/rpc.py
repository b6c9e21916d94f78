"""gRPC plumbing shared by inference nodes and the controller: generic handlers over raw codec frames.

Both servers follow :class:`edgeflower.server.edge.EdgeServer`: one thread pool, identity (de)serialisers, every
failure aborts the RPC with the :class:`~edgeflower.transport.errors.EdgeError` status code of the exception, and
:func:`call` turns a failed call back into the same exception class on the client side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from logging import ERROR, WARNING

import grpc
from flwr.common.logger import log

from edgeflower.transport.codec import Frame, Limits, decode_frame
from edgeflower.transport.errors import EdgeError, from_rpc_error
from edgeflower.transport.grpc_server import RunningServer, open_channel, start_server
from edgeflower.transport.service import identity
from edgeflower.transport.tls import TLSConfig

__all__ = ["GrpcServer", "Handler", "call", "open_channel"]

Handler = Callable[[bytes, grpc.ServicerContext], bytes]


def _guard(name: str, fn: Handler, who: str) -> Handler:
    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return fn(request, context)
        except EdgeError as exc:
            log(WARNING, "%s: %s rejected: %s %s", who, name, exc.code.name, exc.detail)
            context.abort(exc.code, exc.detail)
        except Exception as exc:
            log(ERROR, "%s: %s failed: %r", who, name, exc)
            context.abort(grpc.StatusCode.INTERNAL, f"{who} error in {name}: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return handler


class GrpcServer:
    """A gRPC server of unary methods on raw frames.

    Parameters
    ----------
    service : str
        Fully qualified service name.
    methods : mapping of str to Handler
        Method name -> ``handler(request_bytes, context) -> reply_bytes``.
    who : str
        Name used in logs and error details.
    host, port : str, int
        Address to bind (port 0 picks a free one).
    workers : int
        Worker threads (also the limit of concurrent RPCs).
    max_message_bytes : int
        gRPC's message limit.
    tls : TLSConfig, optional
        Serve over TLS.
    """

    def __init__(
        self,
        service: str,
        methods: Mapping[str, Handler],
        who: str,
        host: str,
        port: int,
        workers: int,
        max_message_bytes: int,
        tls: TLSConfig | None = None,
    ) -> None:
        self.service, self.methods, self.who = service, dict(methods), who
        self.host, self.port, self.workers, self.tls = host, port, workers, tls
        self.max_message_bytes = max_message_bytes
        self._server: RunningServer | None = None
        self.address = ""

    def start(self) -> str:
        """Bind and serve; return ``host:port``. Raises ``OSError`` when the address cannot be bound."""
        kw = {"request_deserializer": identity, "response_serializer": identity}
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(_guard(name, fn, self.who), **kw)  # type: ignore[arg-type]
            for name, fn in self.methods.items()
        }
        generic = grpc.method_handlers_generic_handler(self.service, handlers)
        running = start_server(
            [generic], self.host, self.port, self.workers, self.max_message_bytes, self.tls, self.who
        )
        self._server, self.port, self.address = running, running.port, running.address
        return self.address

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving and join the worker threads. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace_s)


def call(
    channel: grpc.Channel,
    method: str,
    request: bytes,
    timeout_s: float,
    address: str,
    limits: Limits,
) -> Frame:
    """Call unary ``method`` with a frame and decode the reply frame.

    Raises
    ------
    EdgeError
        The subclass matching the RPC's status (:class:`EdgeUnavailableError` when the peer is gone).
    """
    stub = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
    try:
        reply = stub(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc, address) from None
    return decode_frame(reply, limits)
