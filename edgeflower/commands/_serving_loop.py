"""The loop every long-running ``edgeflower`` server command shares: start, announce, serve until a signal."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["serve_until_signal"]


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
        except errors as exc:
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
