"""``edgeflower edge-server``: run an edge server as a long-lived process.

Prints ``edge server listening on HOST:PORT`` (one line on stdout, flushed) once it serves, and shuts down cleanly
(open streams cancelled, sessions dropped) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeflower.commands._serving_loop import serve_until_signal
from edgeflower.server.edge import EdgeServer, EdgeServerConfig
from edgeflower.transport.auth import load_secret
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES
from edgeflower.transport.tls import TLSConfig

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``edge-server`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "edge-server",
        help="run an edge server that trains devices' server-side layers",
        description="Serve split-training sessions over gRPC until SIGTERM/SIGINT.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: %(default)s)")
    p.add_argument("--secret-file", required=True, help="file holding the token secret shared with the ServerApp")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS, needs --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--edge-id", help="this edge server's id (tokens for other ids are refused)")
    p.add_argument("--max-sessions", type=int, default=64, help="most concurrent sessions (default: %(default)s)")
    p.add_argument(
        "--idle-timeout", type=float, default=300.0, help="drop sessions idle this many seconds (default: %(default)s)"
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
        help="largest message in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--peer-root-cert", help="PEM root certificate to trust when migrating sessions to TLS-serving edge servers"
    )
    # fault injection for the migration tests (a real process dying right after the destination's ack)
    p.add_argument("--crash-after-migration-ack", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the server, print its address, serve until SIGTERM/SIGINT, stop; return the exit code."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.max_sessions < 1 or args.idle_timeout <= 0 or args.max_message_mb <= 0:
        raise ValueError("--max-sessions, --idle-timeout and --max-message-mb must be positive")
    tls = TLSConfig.from_files(args.tls_cert, args.tls_key) if args.tls_cert else None
    config = EdgeServerConfig(
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        peer_root_cert=Path(args.peer_root_cert).read_bytes() if args.peer_root_cert else None,
        crash_after_migration_ack=args.crash_after_migration_ack,
    )
    secret = load_secret(args.secret_file)
    server = EdgeServer(args.host, args.port, secret=secret, tls=tls, edge_id=args.edge_id, config=config)
    return serve_until_signal("edge-server", "edge server", server.start, server.stop, (OSError,))
