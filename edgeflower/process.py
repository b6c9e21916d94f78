"""An ``edgeflower`` subcommand in a child process that announces ``<what> listening on HOST:PORT``.

Edge servers, inference nodes and serving controllers all print such a line once they serve (port ``0`` picks a
free one). :class:`ListeningProcess` starts the command, waits for the line, keeps the output (a thread drains
the pipe, so a chatty child never blocks on it) and always reaps the child: use it with ``with`` or call
:meth:`~ListeningProcess.kill` in ``finally``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ListeningProcess"]


class ListeningProcess:
    """``python -m edgeflower.cli <args>`` in a subprocess, ready once it prints ``ready``.

    Parameters
    ----------
    args : sequence of str
        The ``edgeflower`` subcommand and its arguments.
    ready : str
        Prefix of the line the command prints once it serves; the rest of the line is its ``host:port``.
    cwd : str or Path, optional
        Working directory of the child.
    startup_timeout_s : float
        How long to wait for the ``ready`` line before the child is killed and :class:`RuntimeError` raised.
    launcher : sequence of str, optional
        What runs the arguments (default ``python -m edgeflower.cli``; tests use a script that alters the CLI's
        environment first).

    Attributes
    ----------
    address : str
        ``host:port`` the child serves on.
    output : list of str
        Every line the child printed so far (stdout and stderr).
    """

    def __init__(
        self,
        args: Sequence[str],
        ready: str,
        cwd: str | Path | None = None,
        startup_timeout_s: float = 60.0,
        launcher: Sequence[str] | None = None,
    ) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [*(launcher or (sys.executable, "-m", "edgeflower.cli")), *self.args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, args=(lines,), daemon=True)
        self._reader.start()
        self.address = ""
        deadline = time.monotonic() + startup_timeout_s
        try:
            while not self.address:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                if line.startswith(ready):
                    self.address = line.rsplit(" ", 1)[1].strip()
        except queue.Empty:
            self.kill()
            what = self.args[0] if self.args else "edgeflower"
            raise RuntimeError(f"{what} did not start:\n{''.join(self.output)[-3000:]}") from None

    def _pump(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            lines.put(line)

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (a graceful stop), wait for the exit, reap; return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.kill()

    def sigkill(self) -> None:
        """SIGKILL (a crash) and wait for the child to die."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL if still running, reap, close the pipe. Idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ListeningProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
