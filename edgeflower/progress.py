"""Progress of long work, as log lines a person can follow in ``flwr run --stream``.

:class:`BatchProgress` reports a node's batches while a round runs: at most one line every ``every_s`` seconds (and
the last batch), each with the batches done, the seconds per batch so far and the time left at that pace.
:func:`slow_round_warning` words the warning the ServerApp logs at round start when the plan predicts a long round.
The clock is injectable, so tests decide on logic, never on this machine's speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING

__all__ = ["SLOW_ROUND_S", "BatchProgress", "format_seconds", "slow_round_warning"]

SLOW_ROUND_S = 180.0
"""A round predicted longer than this (seconds) gets a WARNING at its start."""


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"`` or ``"2.1 h"``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _flower_log(level: int, msg: str) -> None:
    from flwr.common.logger import log

    log(level, "%s", msg)


class BatchProgress:
    """Log a line per ``every_s`` seconds of batches: done/total, seconds per batch, time left.

    Parameters
    ----------
    label : str
        Who is working, e.g. ``"node 3 (partition 1) round 2"``.
    total : int
        Batches expected (0 = unknown: no time left is given).
    every_s : float
        Least seconds between two lines (the last batch always gets one).
    clock : callable
        Seconds, monotonic (``time.monotonic``; tests inject their own).
    emit : callable
        Receives ``(level, line)``; Flower's logger by default (so the line reaches ``flwr run --stream``).
    """

    def __init__(
        self,
        label: str,
        total: int,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[int, str], None] = _flower_log,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.label, self.total, self.every_s = label, max(0, int(total)), every_s
        self._clock, self._emit = clock, emit
        self._t0 = clock()
        self._last = self._t0
        self.lines: list[str] = []

    def start(self) -> None:
        """Restart the clock (call when the first batch starts, after any setup)."""
        self._t0 = self._last = self._clock()

    def update(self, done: int, note: str = "") -> str | None:
        """``done`` batches are finished; log a line if ``every_s`` passed (or this was the last). Returns it."""
        now = self._clock()
        last = self.total > 0 and done >= self.total
        if not last and now - self._last < self.every_s:
            return None
        self._last = now
        elapsed = now - self._t0
        per = elapsed / done if done > 0 else 0.0
        if last:
            line = f"{self.label}: {done} batches done in {format_seconds(elapsed)} ({per:.2f} s/batch)"
        elif self.total:
            left = per * (self.total - done)
            pct = 100 * done / self.total
            line = (
                f"{self.label}: batch {done}/{self.total} ({pct:.0f} %), {per:.2f} s/batch, "
                f"about {format_seconds(left)} left"
            )
        else:
            line = f"{self.label}: batch {done}, {per:.2f} s/batch"
        if note:
            line += f" ({note})"
        self.lines.append(line)
        self._emit(INFO, line)
        return line


def slow_round_warning(predicted_s: Mapping[str, float], threshold_s: float = SLOW_ROUND_S) -> str | None:
    """The WARNING for a round whose slowest node is predicted to take longer than ``threshold_s``, else None.

    Parameters
    ----------
    predicted_s : mapping of str to float
        Who (e.g. ``"partition 1 (device x3, link 5/5/20)"``) -> predicted seconds of training this round.
    threshold_s : float
        Rounds predicted longer than this are warned about.
    """
    if not predicted_s:
        return None
    who, worst = max(predicted_s.items(), key=lambda kv: kv[1])
    if worst <= threshold_s:
        return None
    return (
        f"this round is predicted to take about {format_seconds(worst)} (slowest: {who}); set max-batches, "
        "num-rounds or faster link-profiles/device-profiles for a shorter run"
    )


def log_slow_round(predicted_s: Mapping[str, float], threshold_s: float = SLOW_ROUND_S) -> str | None:
    """Log :func:`slow_round_warning` as a WARNING through Flower's logger, if there is one; return it."""
    text = slow_round_warning(predicted_s, threshold_s)
    if text is not None:
        _flower_log(WARNING, text)
    return text
