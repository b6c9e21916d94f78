"""A manual clock for tests that decide on logic, not on this machine's speed."""

from __future__ import annotations

import threading


class ManualClock:
    """A clock that moves only when someone sleeps on it (thread-safe); records every sleep."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.t += seconds
