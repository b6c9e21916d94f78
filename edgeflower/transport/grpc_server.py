"""Start and stop a gRPC server the way every edgeflower service does (edge server, inference node, controller),
and open a channel to one.

One thread pool whose size is also the limit of concurrent RPCs, gRPC's message limits from
:func:`~edgeflower.transport.service.channel_options`, a TLS or insecure port (port ``0`` picks a free one), a
readable :class:`OSError` when the address cannot be bound, and a stop that joins every worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc

from edgeflower.transport.service import channel_options
from edgeflower.transport.tls import TLSConfig, client_credentials

__all__ = ["RunningServer", "format_address", "open_channel", "start_server"]


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{bracketed}:{port}"


@dataclass
class RunningServer:
    """A started gRPC server, its worker pool and the address it is bound to."""

    server: grpc.Server
    executor: futures.ThreadPoolExecutor
    port: int
    address: str

    def stop(self, grace_s: float, before_join: Callable[[], None] | None = None) -> None:
        """Stop serving (open RPCs get ``grace_s``), call ``before_join`` (e.g. wake blocked streams), join."""
        self.server.stop(grace_s).wait()
        if before_join is not None:
            before_join()
        self.executor.shutdown(wait=True)


def start_server(
    handlers: Sequence[grpc.GenericRpcHandler],
    host: str,
    port: int,
    workers: int,
    max_message_bytes: int,
    tls: TLSConfig | None = None,
    who: str = "server",
) -> RunningServer:
    """Bind ``host:port`` and serve ``handlers`` with ``workers`` threads.

    Raises
    ------
    OSError
        When the address cannot be bound (in use, not an address of this machine).
    """
    executor = futures.ThreadPoolExecutor(workers, thread_name_prefix=f"edgeflower-{who.replace(' ', '-')}")
    server = grpc.server(
        executor,
        handlers=list(handlers),
        options=channel_options(max_message_bytes, server=True),
        maximum_concurrent_rpcs=workers,
    )
    target = format_address(host, port)
    reason = ""
    try:
        bound = server.add_secure_port(target, tls.server_credentials()) if tls else server.add_insecure_port(target)
    except RuntimeError as exc:
        bound, reason = 0, str(exc)
    if not bound:
        executor.shutdown(wait=False)
        raise OSError(f"{who} cannot bind {target} {reason}".strip())
    server.start()
    return RunningServer(server, executor, bound, format_address(host, bound))


def open_channel(
    address: str, max_message_bytes: int, root_cert: bytes | None = None, server_name: str | None = None
) -> grpc.Channel:
    """A channel to ``address`` with the same message limits as the servers; TLS when ``root_cert`` is given.

    ``server_name`` overrides the name the server's certificate is checked against (TLS only).
    """
    options: list[tuple[str, int | str]] = list(channel_options(max_message_bytes))
    if root_cert is None:
        return grpc.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, client_credentials(root_cert), options=options)
