"""The edge server's table of open sessions, with a limit and an idle-timeout reaper thread."""

from __future__ import annotations

import threading
import time
from logging import INFO

from flwr.common.logger import log

from edgeflower.edge.session import TrainingSession
from edgeflower.transport.errors import EdgeOverloadedError, SessionNotFoundError
from edgeflower.transport.grpc_server import trim_memory

__all__ = ["SessionRegistry"]


class SessionRegistry:
    """Thread-safe map from session id to :class:`TrainingSession`.

    Parameters
    ----------
    max_sessions : int
        Most sessions open at once; more are refused with :class:`EdgeOverloadedError`.
    idle_timeout_s : float
        Sessions without activity for this long are dropped by :meth:`reap_idle` (and by the reaper thread).
    max_per_node : int or None
        Most sessions one device node (one run's node id) holds at once (``None``: no per-node limit).
    """

    def __init__(self, max_sessions: int = 64, idle_timeout_s: float = 300.0, max_per_node: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_per_node = max_per_node
        self.idle_timeout_s = idle_timeout_s
        self._sessions: dict[str, TrainingSession] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def ids(self) -> list[str]:
        """Ids of the open sessions."""
        with self._lock:
            return list(self._sessions)

    def add(self, session: TrainingSession) -> None:
        """Register a new session.

        Raises
        ------
        EdgeOverloadedError
            If :attr:`max_sessions` sessions are already open, or the session's node already holds
            :attr:`max_per_node`.
        """
        with self._lock:
            self._check_room(session.claims.run_id, session.claims.node_id)
            self._sessions[session.session_id] = session

    def _check_room(self, run_id: int, node_id: int) -> None:
        if len(self._sessions) >= self.max_sessions:
            raise EdgeOverloadedError(f"edge server already holds {self.max_sessions} sessions")
        if self.max_per_node is not None:
            held = sum(1 for s in self._sessions.values() if (s.claims.run_id, s.claims.node_id) == (run_id, node_id))
            if held >= self.max_per_node:
                raise EdgeOverloadedError(
                    f"node {node_id} of run {run_id} already holds {held} sessions on this edge server "
                    f"(at most {self.max_per_node})"
                )

    def check_room(self, run_id: int, node_id: int) -> None:
        """Raise :class:`EdgeOverloadedError` now if :meth:`add` would refuse a session of this node."""
        with self._lock:
            self._check_room(run_id, node_id)

    def get(self, session_id: str) -> TrainingSession:
        """The session with this id.

        Raises
        ------
        SessionNotFoundError
            If there is none (never opened, closed, disconnected or timed out).
        """
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFoundError(
                f"no session {session_id[:64]!r} on this edge server (closed, expired or unknown)"
            )
        return session

    def drop(self, session_id: str, reason: str, *, trim: bool = True) -> bool:
        """Remove a session and free its tail; return whether it was open. Waits for a step in progress.

        ``trim=False`` leaves giving the memory back to the OS (:func:`trim_memory`) to the caller (a migration does
        it after answering the device)."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        with session.lock:
            session.release()
        if trim:
            trim_memory()  # the tail and optimizer go back to the OS, not to a growing heap
        log(INFO, "edge server: session %s dropped (%s)", session_id[:8], reason)
        return True

    def reap_idle(self, now: float | None = None) -> list[str]:
        """Drop sessions idle for longer than :attr:`idle_timeout_s`; return their ids."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [sid for sid, s in self._sessions.items() if now - s.last_active > self.idle_timeout_s]
        return [sid for sid in stale if self.drop(sid, f"idle for more than {self.idle_timeout_s:g} s")]

    def clear(self, reason: str = "server stopping") -> None:
        """Drop every session."""
        for sid in self.ids():
            self.drop(sid, reason)

    def start_reaper(self, interval_s: float) -> None:
        """Start the background thread that calls :meth:`reap_idle` every ``interval_s`` seconds."""
        if self._reaper is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval_s):
                self.reap_idle()

        self._reaper = threading.Thread(target=run, name="edgeflower-edge-reaper", daemon=True)
        self._reaper.start()

    def stop_reaper(self) -> None:
        """Stop the reaper thread and wait for it."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
            self._reaper = None
