"""``edgeflower infer-node``: run an inference node (one segment of a partitioned model) as a process.

Prints ``inference node listening on HOST:PORT`` (one flushed line on stdout) once it serves; stops cleanly on
SIGTERM or SIGINT. The controller (``edgeflower serve``) deploys the segment and its weights to it over gRPC.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from edgeflower.commands._serving_loop import serve_until_signal
from edgeflower.serving.node import InferenceNode
from edgeflower.transport.auth import load_secret
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES
from edgeflower.transport.tls import TLSConfig

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``infer-node`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "infer-node",
        help="run an inference node of a serving chain",
        description="Serve one segment of a partitioned model over gRPC until SIGTERM/SIGINT.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: %(default)s)")
    p.add_argument("--secret-file", required=True, help="file holding the token secret shared with the controller")
    p.add_argument("--node-id", help="this node's id (tokens for other ids are refused)")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS, needs --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
        help="largest message in MiB (default: %(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the node, print its address, serve until SIGTERM/SIGINT, stop; return the exit code."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.threads < 1 or args.max_message_mb <= 0:
        raise ValueError("--threads and --max-message-mb must be positive")
    torch.set_num_threads(args.threads)
    tls = TLSConfig.from_files(args.tls_cert, args.tls_key) if args.tls_cert else None
    node = InferenceNode(
        args.host,
        args.port,
        secret=load_secret(args.secret_file),
        node_id=args.node_id,
        tls=tls,
        max_message_bytes=int(args.max_message_mb * 2**20),
    )
    return serve_until_signal("infer-node", "inference node", node.start, node.stop, (OSError,))
