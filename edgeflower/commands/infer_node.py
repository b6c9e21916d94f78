"""``edgeflower infer-node``: run an inference node (one segment of a partitioned model) as a process.

Prints ``inference node listening on HOST:PORT`` (one flushed line on stdout) once it serves; stops cleanly on
SIGTERM or SIGINT. The controller (``edgeflower serve``) deploys the segment and its weights to it over gRPC.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from edgeflower.commands._server_command import (
    add_server_arguments,
    max_message_bytes,
    serve_until_signal,
    tls_from_args,
)
from edgeflower.models.reference import trust_reference
from edgeflower.serving.node import InferenceNode
from edgeflower.transport.auth import load_secret
from edgeflower.transport.grpc_server import ServerOptions

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``infer-node`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "infer-node",
        help="run an inference node of a serving chain",
        description="Serve one segment of a partitioned model over gRPC until SIGTERM/SIGINT.",
    )
    add_server_arguments(p, "controller")
    p.add_argument("--node-id", help="this node's id (tokens for other ids are refused)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PACKAGE.MODULE:CALLABLE",
        help="a model reference this node may build when a deployment names it (repeatable; zoo models need none)",
    )
    p.add_argument(
        "--max-model-params",
        type=int,
        help="largest model (parameters and buffers) a deployment may describe (default: what fits in one message)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the node, print its address, serve until SIGTERM/SIGINT, stop; return the exit code."""
    tls = tls_from_args(args)
    if args.threads < 1 or (args.max_model_params is not None and args.max_model_params < 1):
        raise ValueError("--threads and --max-model-params must be positive")
    if args.first_message_timeout <= 0:
        raise ValueError("--first-message-timeout must be positive")
    torch.set_num_threads(args.threads)
    trust_reference(*args.model)  # imported now: a typo fails at start-up
    node = InferenceNode(
        args.host,
        args.port,
        secret=load_secret(args.secret_file),
        node_id=args.node_id,
        tls=tls,
        max_message_bytes=max_message_bytes(args),
        max_model_params=args.max_model_params,
        insecure=args.insecure,
        options=ServerOptions(first_message_s=args.first_message_timeout),
    )
    return serve_until_signal("infer-node", "inference node", node.start, node.stop, (OSError,))
