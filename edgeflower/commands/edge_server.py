"""``edgeflower edge-server``: run an edge server as a long-lived process.

Prints ``edge server listening on HOST:PORT`` (one line on stdout, flushed) once it serves, and shuts down cleanly
(open streams cancelled, sessions dropped) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeflower.commands._serving_loop import add_server_arguments, max_message_bytes, serve_until_signal, tls_from_args
from edgeflower.server.edge import EdgeServer, EdgeServerConfig
from edgeflower.transport.auth import load_secret

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``edge-server`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "edge-server",
        help="run an edge server that trains devices' server-side layers",
        description="Serve split-training sessions over gRPC until SIGTERM/SIGINT.",
    )
    add_server_arguments(p, "ServerApp")
    p.add_argument("--edge-id", help="this edge server's id (tokens for other ids are refused)")
    p.add_argument("--max-sessions", type=int, default=64, help="most concurrent sessions (default: %(default)s)")
    p.add_argument(
        "--idle-timeout", type=float, default=300.0, help="drop sessions idle this many seconds (default: %(default)s)"
    )
    p.add_argument(
        "--peer-root-cert", help="PEM root certificate to trust when migrating sessions to TLS-serving edge servers"
    )
    # fault injection for the migration tests (a real process dying right after the destination's ack)
    p.add_argument("--crash-after-migration-ack", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the server, print its address, serve until SIGTERM/SIGINT, stop; return the exit code."""
    tls = tls_from_args(args)
    if args.max_sessions < 1 or args.idle_timeout <= 0:
        raise ValueError("--max-sessions and --idle-timeout must be positive")
    config = EdgeServerConfig(
        max_message_bytes=max_message_bytes(args),
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        peer_root_cert=Path(args.peer_root_cert).read_bytes() if args.peer_root_cert else None,
        crash_after_migration_ack=args.crash_after_migration_ack,
    )
    secret = load_secret(args.secret_file)
    server = EdgeServer(args.host, args.port, secret=secret, tls=tls, edge_id=args.edge_id, config=config)
    return serve_until_signal("edge-server", "edge server", server.start, server.stop, (OSError,))
