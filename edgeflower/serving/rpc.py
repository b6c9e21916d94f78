"""gRPC plumbing shared by inference nodes and the controller: unary methods over raw codec frames.

Both servers follow :class:`edgeflower.edge.server.EdgeServer` (see :mod:`edgeflower.transport.grpc_server`): an
asyncio gRPC server whose half-open calls hold no thread and time out, a data lane and a separate control lane
(heartbeats, status) of worker threads, per-method request size limits, every failure aborting the RPC with the
:class:`~edgeflower.transport.errors.EdgeError` status code of the exception; :func:`call` turns a failed call back
into the same exception class on the client side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import grpc

from edgeflower.transport.channel import open_channel
from edgeflower.transport.codec import Frame, Limits, decode_frame
from edgeflower.transport.errors import from_rpc_error
from edgeflower.transport.grpc_server import RunningServer, ServerOptions, Unary, start_server
from edgeflower.transport.service import identity
from edgeflower.transport.tls import TLSConfig

__all__ = ["GrpcServer", "Handler", "ServerOptions", "Unary", "call", "open_channel"]

Handler = Callable[[bytes, grpc.ServicerContext], bytes]


class GrpcServer:
    """A gRPC server of unary methods on raw frames.

    Parameters
    ----------
    service : str
        Fully qualified service name.
    methods : mapping of str to Unary or Handler
        Method name -> :class:`Unary` (lane, size limit) or a bare ``handler(request_bytes, context) -> bytes``
        (data lane, gRPC's size limit).
    who : str
        Name used in logs and error details.
    host, port : str, int
        Address to bind (port 0 picks a free one).
    workers : int
        Worker threads of the data lane.
    max_message_bytes : int
        gRPC's message limit.
    tls : TLSConfig, optional
        Serve over TLS.
    options : ServerOptions, optional
        Deadlines and lanes (``workers`` overrides its ``data_workers``).
    insecure : bool
        Allow plaintext on a non-loopback address (with a WARNING).
    in_clear : str
        What travels in clear without TLS (for that warning and the refusal).
    """

    def __init__(
        self,
        service: str,
        methods: Mapping[str, Unary | Handler],
        who: str,
        host: str,
        port: int,
        workers: int,
        max_message_bytes: int,
        tls: TLSConfig | None = None,
        options: ServerOptions | None = None,
        insecure: bool = False,
        in_clear: str = "tokens and tensors",
    ) -> None:
        self.service, self.who = service, who
        self.methods = {name: m if isinstance(m, Unary) else Unary(m) for name, m in methods.items()}
        self.host, self.port, self.workers, self.tls = host, port, workers, tls
        self.max_message_bytes = max_message_bytes
        base = options or ServerOptions()
        self.options = dataclasses.replace(base, data_workers=workers)
        self.insecure, self.in_clear = insecure, in_clear
        self._server: RunningServer | None = None
        self.address = ""

    def start(self) -> str:
        """Bind and serve; return ``host:port``.

        Raises
        ------
        OSError
            When the address cannot be bound.
        ValueError
            For plaintext on a non-loopback address without ``insecure``.
        """
        running = start_server(
            self.service,
            self.methods,
            self.host,
            self.port,
            self.max_message_bytes,
            self.tls,
            self.who,
            self.options,
            self.insecure,
            self.in_clear,
        )
        self._server, self.port, self.address = running, running.port, running.address
        return self.address

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    @property
    def refused(self) -> dict[str, int]:
        """Calls refused so far: ``first_message`` (half-open), ``busy`` (no free worker), ``too_large``."""
        return dict(self._server.refused) if self._server is not None else {}

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
