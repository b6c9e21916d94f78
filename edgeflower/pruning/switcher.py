"""Pick the portfolio variant that fits a budget and swap it in while serving.

:func:`choose` is the policy: among the variants that meet every given bound (latency at a batch size, bytes,
accuracy), the most accurate one when a latency or memory bound is given, else the fastest one (ties broken
by the other figure, then by size). :class:`Switcher` serves requests with the active variant and swaps it
atomically: a request that started on the old variant finishes on it, the next one runs on the new one.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from edgeflower.pruning.errors import BudgetError
from edgeflower.pruning.portfolio import Portfolio, Variant

__all__ = ["Budget", "SwitchEvent", "Switcher", "choose"]


@dataclass(frozen=True)
class Budget:
    """Bounds a variant must meet; ``None`` means unbounded.

    Attributes
    ----------
    max_latency_ms : float, optional
        Largest acceptable CPU latency at ``batch_size``.
    max_bytes : int, optional
        Largest acceptable weight size.
    min_accuracy : float, optional
        Lowest acceptable accuracy.
    batch_size : int
        Batch size the latency bound refers to.
    """

    max_latency_ms: float | None = None
    max_bytes: int | None = None
    min_accuracy: float | None = None
    batch_size: int = 1

    def admits(self, v: Variant) -> bool:
        """Whether ``v`` meets every bound."""
        lat = v.latency_ms.get(self.batch_size, math.inf)
        acc = -math.inf if math.isnan(v.accuracy) else v.accuracy
        return (
            (self.max_latency_ms is None or lat <= self.max_latency_ms)
            and (self.max_bytes is None or v.bytes <= self.max_bytes)
            and (self.min_accuracy is None or acc >= self.min_accuracy)
        )


def choose(variants: list[Variant], budget: Budget) -> Variant:
    """The best variant that meets ``budget``.

    Best means the highest accuracy when the budget bounds latency or memory, otherwise (accuracy bound only,
    or no bound) the lowest latency at ``budget.batch_size``.

    Raises
    ------
    BudgetError
        If no variant meets the budget.
    """
    fits = [v for v in variants if budget.admits(v)]
    if not fits:
        raise BudgetError(
            f"no variant meets {budget}; variants: "
            + ", ".join(
                f"{v.name} (acc {v.accuracy:.4f}, {v.latency_ms.get(budget.batch_size, math.nan):.2f} ms, {v.bytes} B)"
                for v in variants
            )
        )

    def acc(v: Variant) -> float:
        return -math.inf if math.isnan(v.accuracy) else v.accuracy

    def lat(v: Variant) -> float:
        return v.latency_ms.get(budget.batch_size, math.inf)

    if budget.max_latency_ms is not None or budget.max_bytes is not None:
        return min(fits, key=lambda v: (-acc(v), lat(v), v.bytes))
    return min(fits, key=lambda v: (lat(v), -acc(v), v.bytes))


@dataclass(frozen=True)
class SwitchEvent:
    """One switch: from and to which variant, and how long it took (loading included when not resident)."""

    previous: str | None
    current: str
    seconds: float
    loaded: bool


class Switcher:
    """Serve a portfolio's active variant and switch between variants at run time.

    Parameters
    ----------
    portfolio : Portfolio
        The variants.
    resident : bool
        Keep every variant in memory (switching is a reference swap); otherwise a switch loads the variant from
        the portfolio directory (verified) and drops the previous one.
    initial : str, optional
        Variant to start with (default: the most accurate one).
    """

    def __init__(self, portfolio: Portfolio, resident: bool = True, initial: str | None = None) -> None:
        self.portfolio = portfolio
        self.resident = resident
        self._lock = threading.Lock()
        self._models: dict[str, nn.Module] = {}
        if resident:
            for v in portfolio.variants:
                self._models[v.name] = (v.model or portfolio.load_model(v.name)).eval()
        start = initial or choose(portfolio.variants, Budget(min_accuracy=-math.inf, max_bytes=2**62)).name
        self._active: tuple[str, nn.Module] | None = None
        self.history: list[SwitchEvent] = []
        self.switch(start)

    @property
    def active(self) -> str:
        """Name of the variant serving requests."""
        assert self._active is not None
        return self._active[0]

    @property
    def model(self) -> nn.Module:
        """The active model."""
        assert self._active is not None
        return self._active[1]

    def resident_bytes(self) -> int:
        """Bytes of parameters and buffers held in memory by the switcher."""
        models = self._models.values() if self.resident else [self.model]
        return sum(t.numel() * t.element_size() for m in models for t in [*m.parameters(), *m.buffers()])

    def switch(self, name: str) -> SwitchEvent:
        """Make variant ``name`` the active one (atomic for concurrent requests)."""
        t0 = time.perf_counter()
        self.portfolio[name]
        with self._lock:
            previous = self._active[0] if self._active else None
            loaded = False
            if self.resident:
                model = self._models[name]
            elif previous == name:
                model = self.model
            else:
                model = self.portfolio.load_model(name)
                loaded = True
            self._active = (name, model)
        event = SwitchEvent(previous, name, time.perf_counter() - t0, loaded)
        self.history.append(event)
        return event

    def select(self, budget: Budget) -> SwitchEvent:
        """Switch to the best variant that meets ``budget`` (see :func:`choose`)."""
        return self.switch(choose(self.portfolio.variants, budget).name)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Serve one request with the variant active when it arrives."""
        active = self._active
        assert active is not None
        return active[1](x)
