"""The controller's request journal: an append-only JSON-lines file that survives a controller crash.

Lines::

    {"e": "accepted", "id": "<client>/<request id>", "sha": "<sha256 of the input bytes>", "t": <unix time>}
    {"e": "answered", "id": "<client>/<request id>", "reply": "<base64 of the prediction frame>", "t": <unix time>}

(the ``id`` is a :func:`~edgeflower.serving.exactly_once.journal_key`: the request id scoped by its client).

A request is journalled as accepted before it is executed and as answered (with its full reply) before the reply
leaves the controller. After a restart, answered requests are replayed from the journal when a client retries them
(never executed again), and accepted-but-unanswered ones are reported as *pending* and executed when their client
retries. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from logging import WARNING
from pathlib import Path

from flwr.common.logger import log

__all__ = ["Journal"]


class Journal:
    """Append-only journal of accepted and answered request ids.

    Parameters
    ----------
    path : str or Path, optional
        The file; ``None`` keeps everything in memory (nothing survives a restart).
    fsync : bool
        ``os.fsync`` after every line (survives a machine crash, not only a process crash).
    """

    def __init__(self, path: str | Path | None = None, fsync: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self._lock = threading.Lock()
        self.answers: dict[str, bytes] = {}
        self.accepted: dict[str, str] = {}
        self._file = None
        if self.path is not None:
            self._replay()
            torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._file = self.path.open("a", encoding="utf-8")
            if torn:
                self._file.write("\n")  # never glue a new entry onto a torn last line

    def _replay(self) -> None:
        assert self.path is not None
        if not self.path.exists():
            return
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                entry = json.loads(line)
                if entry["e"] == "accepted":
                    self.accepted[str(entry["id"])] = str(entry["sha"])
                elif entry["e"] == "answered":
                    self.answers[str(entry["id"])] = base64.b64decode(entry["reply"])
            except (ValueError, KeyError, TypeError):
                log(WARNING, "journal %s: ignoring unreadable line %d", self.path, n)

    @property
    def pending(self) -> list[str]:
        """Accepted request ids without an answer."""
        with self._lock:
            return sorted(set(self.accepted) - set(self.answers))

    def _write(self, entry: dict) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def accept(self, request_id: str, sha: str) -> None:
        """Record that ``request_id`` (input hash ``sha``) was accepted."""
        with self._lock:
            self.accepted[request_id] = sha
            self._write({"e": "accepted", "id": request_id, "sha": sha, "t": time.time()})

    def answer(self, request_id: str, reply: bytes) -> None:
        """Record ``request_id``'s reply (before it is sent)."""
        with self._lock:
            self.answers[request_id] = reply
            self._write(
                {"e": "answered", "id": request_id, "reply": base64.b64encode(reply).decode(), "t": time.time()}
            )

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
