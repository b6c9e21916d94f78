"""The controller's request journal: an append-only JSON-lines file that survives a controller crash.

Lines::

    {"e": "accepted", "id": "<client>/<request id>", "sha": "<sha256 of the input bytes>", "t": <unix time>}
    {"e": "answered", "id": "<client>/<request id>", "reply": "<base64 of the prediction frame>", "t": <unix time>}

(the ``id`` is a :func:`~edgeflower.serving.exactly_once.journal_key`: the request id scoped by its client).

A request is journalled as accepted before it is executed and as answered (with its full reply) before the reply
leaves the controller. After a restart, answered requests are replayed from the journal when a client retries them
(never executed again), and accepted-but-unanswered ones are reported as *pending* and executed when their client
retries. A torn last line (a crash mid-write) is ignored.

**Bounded.** The journal keeps the newest ``max_entries`` requests and at most ``max_reply_bytes`` of replies (the
oldest are forgotten first, answered or not; logged now and then), so clients sending fresh ids cannot grow the
controller's memory; exactly-once holds within that window (a request forgotten is a new one if sent again). The
file is compacted to what is kept whenever it holds twice as many lines (written to a temporary file, then renamed
over it: a crash leaves the old or the new one). Keys are journal keys
(:func:`~edgeflower.serving.exactly_once.journal_key`, ``"<client>/<request id>"``): a journal written before
requests were scoped by client is not matched, so drain it (let every client retry its pending requests) before
upgrading.
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


def _accepted_line(key: str, sha: str, t: float) -> str:
    return json.dumps({"e": "accepted", "id": key, "sha": sha, "t": t}, separators=(",", ":")) + "\n"


def _answered_line(key: str, reply: bytes, t: float) -> str:
    entry = {"e": "answered", "id": key, "reply": base64.b64encode(reply).decode(), "t": t}
    return json.dumps(entry, separators=(",", ":")) + "\n"


class Journal:
    """Append-only journal of accepted and answered request ids.

    Parameters
    ----------
    path : str or Path, optional
        The file; ``None`` keeps everything in memory (nothing survives a restart).
    fsync : bool
        ``os.fsync`` after every line (survives a machine crash, not only a process crash).
    max_entries : int
        Requests remembered (the newest; accepted and answered ones alike).
    max_reply_bytes : int
        Bytes of replies remembered.

    Attributes
    ----------
    forgotten : int
        Requests forgotten to stay within the bounds.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        fsync: bool = False,
        max_entries: int = 100_000,
        max_reply_bytes: int = 512 * 2**20,
    ) -> None:
        if max_entries < 1 or max_reply_bytes < 1:
            raise ValueError("max_entries and max_reply_bytes must be positive")
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self.max_entries, self.max_reply_bytes = max_entries, max_reply_bytes
        self.forgotten = 0
        self._lock = threading.Lock()
        self.answers: dict[str, bytes] = {}
        self.accepted: dict[str, str] = {}  # in acceptance order: the oldest is forgotten first
        self._reply_bytes = 0
        self._lines = 0
        self._file = None
        if self.path is not None:
            self._replay()
            torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._file = self.path.open("a", encoding="utf-8")
            if torn:
                self._file.write("\n")  # never glue a new entry onto a torn last line
            self._forget_oldest()
            self._compact_if_long()

    def _replay(self) -> None:
        assert self.path is not None
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        self._lines = len(lines)
        for n, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
                key = str(entry["id"])
                if entry["e"] == "accepted":
                    self._forget(key)  # an id accepted again (after it was forgotten) starts afresh, last in line
                    self.accepted[key] = str(entry["sha"])
                elif entry["e"] == "answered" and key in self.accepted:  # a forgotten request's answer stays so
                    self._keep_answer(key, base64.b64decode(entry["reply"]))
            except (ValueError, KeyError, TypeError):
                log(WARNING, "journal %s: ignoring unreadable line %d", self.path, n)

    def _forget(self, key: str) -> None:
        self.accepted.pop(key, None)
        self._reply_bytes -= len(self.answers.pop(key, b""))

    def _keep_answer(self, key: str, reply: bytes) -> None:
        self._reply_bytes += len(reply) - len(self.answers.get(key, b""))
        self.answers[key] = reply

    def _forget_oldest(self) -> None:
        """Forget the oldest requests until the newest ``max_entries`` and ``max_reply_bytes`` remain."""
        forgotten = 0
        while len(self.accepted) > self.max_entries or self._reply_bytes > self.max_reply_bytes:
            self._forget(next(iter(self.accepted)))
            forgotten += 1
        if forgotten:
            before, self.forgotten = self.forgotten, self.forgotten + forgotten
            if before == 0 or before // self.max_entries != self.forgotten // self.max_entries:  # now and then
                log(
                    WARNING,
                    "journal: %d oldest requests forgotten so far (the newest %d are kept: a retry of an older one "
                    "runs again)",
                    self.forgotten,
                    len(self.accepted),
                )

    def _compact_if_long(self) -> None:
        """Rewrite the file with what is kept once it holds twice as many lines (plus a margin)."""
        if self._file is None or self._lines <= 2 * (len(self.accepted) + len(self.answers)) + 1024:
            return
        assert self.path is not None
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for key, sha in self.accepted.items():  # the times of kept entries are not kept (0)
                out.write(_accepted_line(key, sha, 0))
                if key in self.answers:
                    out.write(_answered_line(key, self.answers[key], 0))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)  # the old handle still appends to the replaced file until swapped below
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename survives a machine crash too
        finally:
            os.close(directory)
        old, self._file = self._file, self.path.open("a", encoding="utf-8")
        old.close()
        self._lines = len(self.accepted) + len(self.answers)

    @property
    def pending(self) -> list[str]:
        """Accepted request ids without an answer."""
        with self._lock:
            return sorted(set(self.accepted) - set(self.answers))

    def _record(self, line: str) -> None:
        """Append ``line`` (hold the lock), then keep within the bounds."""
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._lines += 1
        self._forget_oldest()
        self._compact_if_long()

    def accept(self, request_id: str, sha: str) -> None:
        """Record that ``request_id`` (input hash ``sha``) was accepted."""
        with self._lock:
            self._forget(request_id)  # accepted again after it was forgotten: afresh, last in line
            self.accepted[request_id] = sha
            self._record(_accepted_line(request_id, sha, time.time()))

    def answer(self, request_id: str, reply: bytes) -> None:
        """Record ``request_id``'s reply (before it is sent)."""
        with self._lock:
            if request_id not in self.accepted:  # forgotten while it ran: its client gets the reply all the same
                return
            self._keep_answer(request_id, reply)
            self._record(_answered_line(request_id, reply, time.time()))

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
