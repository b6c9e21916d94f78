"""Choose a failover technique against the user's thresholds and priorities.

Each :class:`Candidate` carries estimated accuracy, latency and downtime. Candidates violating a threshold are
dropped; the rest are ranked lexicographically by :attr:`Objectives.priority` (higher accuracy, lower latency, lower
downtime), with values within :attr:`Objectives.tolerance` of the best treated as ties so the next objective
decides. When no candidate meets every threshold, the one that violates them least (by the priority order) is
chosen and flagged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["OBJECTIVES", "Candidate", "Objectives", "Selection", "select"]

OBJECTIVES = ("accuracy", "latency", "downtime")


@dataclass(frozen=True)
class Objectives:
    """User thresholds and priorities.

    Attributes
    ----------
    min_accuracy : float
        Lowest acceptable accuracy (0..1).
    max_latency_s : float
        Highest acceptable request latency.
    max_downtime_s : float
        Highest acceptable downtime of the switch.
    priority : tuple of str
        Objectives in order of importance, a permutation of :data:`OBJECTIVES`.
    tolerance : tuple of float
        Ties: accuracy within ``tolerance[0]`` (absolute), latency and downtime within ``tolerance[1]`` (relative).
    """

    min_accuracy: float = 0.0
    max_latency_s: float = float("inf")
    max_downtime_s: float = float("inf")
    priority: tuple[str, ...] = OBJECTIVES
    tolerance: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if sorted(self.priority) != sorted(OBJECTIVES):
            raise ValueError(f"priority must order {', '.join(OBJECTIVES)}, got {self.priority}")

    @classmethod
    def from_dict(cls, data: dict) -> Objectives:
        """Build from ``{"min_accuracy", "max_latency_ms", "max_downtime_s", "priority"}`` (all optional)."""
        unknown = set(data) - {"min_accuracy", "max_latency_ms", "max_downtime_s", "priority", "tolerance"}
        if unknown:
            raise ValueError(f"unknown objectives {sorted(unknown)}")
        return cls(
            min_accuracy=float(data.get("min_accuracy", 0.0)),
            max_latency_s=float(data.get("max_latency_ms", float("inf"))) / 1000,
            max_downtime_s=float(data.get("max_downtime_s", float("inf"))),
            priority=tuple(data.get("priority", OBJECTIVES)),
            tolerance=tuple(data.get("tolerance", (0.0, 0.0))),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Candidate:
    """A failover option with its estimates."""

    technique: str
    accuracy: float
    latency_s: float
    downtime_s: float

    def violations(self, obj: Objectives) -> dict[str, float]:
        """How far each threshold is missed (0 when met), relative to the threshold."""
        return {
            "accuracy": max(0.0, obj.min_accuracy - self.accuracy),
            "latency": max(0.0, self.latency_s / obj.max_latency_s - 1.0) if obj.max_latency_s > 0 else 0.0,
            "downtime": max(0.0, self.downtime_s / obj.max_downtime_s - 1.0) if obj.max_downtime_s > 0 else 0.0,
        }


@dataclass(frozen=True)
class Selection:
    """The chosen candidate, whether it meets every threshold, and how long choosing took."""

    chosen: Candidate
    meets_objectives: bool
    seconds: float
    considered: tuple[Candidate, ...]


def _value(c: Candidate, objective: str) -> float:
    return {"accuracy": -c.accuracy, "latency": c.latency_s, "downtime": c.downtime_s}[objective]


def _rank(cands: list[Candidate], obj: Objectives) -> Candidate:
    pool = list(cands)
    for objective in obj.priority:
        best = min(_value(c, objective) for c in pool)
        if objective == "accuracy":
            pool = [c for c in pool if _value(c, objective) <= best + obj.tolerance[0]]
        else:
            pool = [c for c in pool if _value(c, objective) <= best * (1 + obj.tolerance[1]) + 1e-12]
    return min(pool, key=lambda c: tuple(_value(c, o) for o in obj.priority))


def select(candidates: Sequence[Candidate], objectives: Objectives) -> Selection:
    """Pick the candidate that meets ``objectives`` best.

    Raises
    ------
    ValueError
        If there is no candidate.
    """
    t0 = time.perf_counter()
    cands = list(candidates)
    if not cands:
        raise ValueError("no failover candidate")
    feasible = [c for c in cands if not any(c.violations(objectives).values())]
    if feasible:
        chosen, ok = _rank(feasible, objectives), True
    else:
        chosen = min(cands, key=lambda c: tuple(c.violations(objectives)[o] for o in objectives.priority))
        ok = False
    return Selection(chosen, ok, time.perf_counter() - t0, tuple(cands))
