"""``edgeflower edge-server``: run an edge server as a long-lived process.

Prints ``edge server listening on HOST:PORT`` (one line on stdout, flushed) once it serves, and shuts down cleanly
(open streams cancelled, sessions dropped) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import math
from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from edgeflower.commands._server_command import (
    add_server_arguments,
    max_message_bytes,
    serve_until_signal,
    tls_from_args,
)
from edgeflower.edge.server import EdgeServer, EdgeServerConfig
from edgeflower.models.reference import trust_reference
from edgeflower.transport.auth import load_secret

__all__ = ["config_from_args", "parse_peers", "register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``edge-server`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "edge-server",
        help="run an edge server that trains devices' server-side layers",
        description="Serve split-training sessions over gRPC until SIGTERM/SIGINT.",
    )
    add_server_arguments(p, "ServerApp")
    p.add_argument("--edge-id", help="this edge server's id (tokens for other ids are refused)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PACKAGE.MODULE:CALLABLE",
        help="a model reference this server may build for devices (repeatable; zoo models need none). "
        "The package must be importable here; code never comes over the network",
    )
    p.add_argument("--max-sessions", type=int, default=64, help="most concurrent sessions (default: %(default)s)")
    p.add_argument(
        "--idle-timeout", type=float, default=300.0, help="drop sessions idle this many seconds (default: %(default)s)"
    )
    p.add_argument(
        "--max-sessions-per-node",
        type=int,
        default=2,
        help="most concurrent sessions of one device node (default: %(default)s)",
    )
    p.add_argument(
        "--max-model-params",
        type=int,
        help="largest model (parameters and buffers) a session may build, e.g. what the run's model needs "
        "(default: what fits in one message)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=16,
        help="worker threads for data calls (opens, steps, closes, migrations; an idle stream holds none) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-waiting-mb",
        type=float,
        default=256.0,
        help="MiB of requests that calls waiting for a worker may hold together; a call past it is refused "
        "RESOURCE_EXHAUSTED at once and retried by the client (default: %(default)s)",
    )
    p.add_argument(
        "--peer-root-cert", help="PEM root certificate to trust when migrating sessions to TLS-serving edge servers"
    )
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="EDGE_ID=HOST:PORT",
        help="an edge server this one may migrate sessions to (repeatable). With any --peer, a migration goes to "
        "the peer its migration token names, at this address, and every other destination is refused; without, "
        "to the address the device names",
    )
    p.set_defaults(func=run)


def parse_peers(values: list[str]) -> dict[str, str]:
    """``--peer`` values ``EDGE_ID=HOST:PORT`` as ``{edge_id: address}``.

    Raises
    ------
    ValueError
        For a value that is not ``EDGE_ID=HOST:PORT`` or an edge id given twice.
    """
    peers: dict[str, str] = {}
    for value in values:
        edge_id, sep, address = value.partition("=")
        host, colon, port = address.rpartition(":")
        bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
        if not sep or not edge_id or not colon or not host or bare_ipv6 or not port.isdigit():
            raise ValueError(f"--peer {value!r}: expected EDGE_ID=HOST:PORT (an IPv6 host in brackets)")
        if not 0 < int(port) < 65536:
            raise ValueError(f"--peer {value!r}: port {port} is not in 1-65535")
        if edge_id in peers:
            raise ValueError(f"--peer: edge id {edge_id!r} given twice")
        peers[edge_id] = address
    return peers


def config_from_args(args: argparse.Namespace) -> EdgeServerConfig:
    """The :class:`EdgeServerConfig` of the parsed ``edge-server`` options.

    Raises
    ------
    ValueError
        For an option out of range or a malformed ``--peer``.
    """
    if min(args.max_sessions, args.max_sessions_per_node, args.workers) < 1 or args.idle_timeout <= 0:
        raise ValueError("--max-sessions, --max-sessions-per-node, --workers and --idle-timeout must be positive")
    if args.max_model_params is not None and args.max_model_params < 1:
        raise ValueError("--max-model-params must be positive")
    if args.first_message_timeout <= 0:
        raise ValueError("--first-message-timeout must be positive")
    if not (math.isfinite(args.max_waiting_mb) and args.max_waiting_mb >= 0):
        raise ValueError("--max-waiting-mb must be a finite number >= 0")
    return EdgeServerConfig(
        max_message_bytes=max_message_bytes(args),
        max_sessions=args.max_sessions,
        max_workers=args.workers,
        idle_timeout_s=args.idle_timeout,
        max_sessions_per_node=args.max_sessions_per_node,
        max_model_params=args.max_model_params,
        first_message_s=args.first_message_timeout,
        max_waiting_bytes=int(args.max_waiting_mb * 2**20),
        insecure=args.insecure,
        peer_root_cert=Path(args.peer_root_cert).read_bytes() if args.peer_root_cert else None,
        peers=parse_peers(args.peer) if args.peer else None,
    )


def run(args: argparse.Namespace) -> int:
    """Start the server, print its address, serve until SIGTERM/SIGINT, stop; return the exit code."""
    trust_reference(*args.model)  # imported now: a typo fails at start-up, not at the first device
    tls = tls_from_args(args)
    config = config_from_args(args)
    if config.peers is None:
        log(WARNING, "edge-server: no --peer given: a migration goes to whatever address the device names")
    secret = load_secret(args.secret_file)
    server = EdgeServer(args.host, args.port, secret=secret, tls=tls, edge_id=args.edge_id, config=config)
    return serve_until_signal("edge-server", "edge server", server.start, server.stop, (OSError,))
