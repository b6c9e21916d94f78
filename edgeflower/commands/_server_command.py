"""What every long-running ``edgeflower`` server command shares: its common arguments (address, secret, TLS,
message limit) and the loop that starts, announces and serves until a signal."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES
from edgeflower.transport.tls import TLSConfig

__all__ = ["add_server_arguments", "max_message_bytes", "serve_until_signal", "tls_from_args"]


def add_server_arguments(p: argparse.ArgumentParser, peer: str) -> None:
    """``--host``, ``--port``, ``--secret-file`` (shared with ``peer``), ``--tls-cert``/``--tls-key``,
    ``--insecure`` and ``--max-message-mb``."""
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: %(default)s)")
    p.add_argument("--secret-file", required=True, help=f"file holding the token secret shared with the {peer}")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS, needs --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on a non-loopback --host (tokens and tensors then travel in clear; loopback never "
        "needs TLS)",
    )
    p.add_argument(
        "--first-message-timeout",
        type=float,
        default=5.0,
        help="seconds a call may take to deliver its request before it is refused (default: %(default)s)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
        help="largest message in MiB (default: %(default)s)",
    )


def tls_from_args(args: argparse.Namespace) -> TLSConfig | None:
    """The TLS configuration of :func:`add_server_arguments`' options (``None``: insecure)."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return TLSConfig.from_files(args.tls_cert, args.tls_key) if args.tls_cert else None


def max_message_bytes(args: argparse.Namespace) -> int:
    """``--max-message-mb`` in bytes (a positive number of MiB)."""
    if args.max_message_mb <= 0:
        raise ValueError("--max-message-mb must be positive")
    return int(args.max_message_mb * 2**20)


def serve_until_signal(
    name: str,
    what: str,
    start: Callable[[], str],
    stop: Callable[[], None],
    errors: tuple[type[BaseException], ...] = (OSError,),
) -> int:
    """Start a server, print ``"<what> listening on ADDRESS"`` (flushed: scripts and tests wait for it), serve until
    SIGTERM or SIGINT, stop it; return the exit code (1 if it could not start).

    Parameters
    ----------
    name : str
        The command, for error messages (``"edge-server"``).
    what : str
        What listens (``"edge server"``).
    start : callable
        Starts the server and returns its address.
    stop : callable
        Stops it (always called).
    errors : tuple of exception types
        Start failures reported as a clean error instead of a traceback.
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            address = start()
        except (*errors, ValueError) as exc:
            print(f"edgeflower {name}: error: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"{what} listening on {address}", flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"{what} stopped", file=sys.stderr, flush=True)
    return 0
