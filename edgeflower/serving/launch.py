"""Start inference nodes as local processes (``edgeflower infer-node``) and stop them.

Used by ``edgeflower serve`` when the config's ``nodes`` is a number, and by the failover benchmark. On several
machines, run ``edgeflower infer-node --host 0.0.0.0 --port 50061 --secret-file s`` on each instead and list their
addresses in the config.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["READY", "NodeProcess"]

READY = "inference node listening on "
"""The line ``edgeflower infer-node`` prints once it serves."""


class NodeProcess:
    """``edgeflower infer-node`` on a free loopback port.

    Parameters
    ----------
    secret_file : Path
        The shared token secret.
    extra : str
        More ``infer-node`` arguments.
    startup_timeout_s : float
        How long to wait for the ``listening`` line.
    """

    def __init__(self, secret_file: str | Path, *extra: str, startup_timeout_s: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "edgeflower.cli", "infer-node", "--port", "0", "--secret-file", str(secret_file)]
        self.proc = subprocess.Popen(
            [*cmd, *extra],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self._reader.start()
        self.address = ""
        deadline = time.monotonic() + startup_timeout_s
        try:
            while not self.address:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                if line.startswith(READY):
                    self.address = line.rsplit(" ", 1)[1].strip()
        except queue.Empty:
            self.kill()
            raise RuntimeError("inference node did not start") from None

    def _pump(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.put(line)

    def kill(self) -> None:
        """SIGKILL (a crash) if still running, and reap. Idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
