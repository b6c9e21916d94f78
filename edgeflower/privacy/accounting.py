"""The privacy accountant's history, kept with the node in Flower's ``context.state`` (never pickled).

Opacus' :class:`~opacus.accountants.RDPAccountant` is fully described by its history, a list of
``(noise_multiplier, sample_rate, num_steps)``. :class:`PrivacyHistory` stores it as a
:class:`~flwr.app.ConfigRecord` of three parallel lists, so epsilon accumulates across rounds (Flower's own Opacus
example builds a new PrivacyEngine every round and so reports per-round epsilon) and the history can travel with the
node (across edge servers).

Every entry is one subsampled Gaussian mechanism per step for what is clipped together: the device-side part in
``dp = device``, the whole model (head and tail, one joint clipping bound) in ``dp = full``. Consecutive entries
with the same noise multiplier and sample rate are merged (exact for both accountants, and it keeps Opacus' PRV
accountant fast). Epsilon is reported by Opacus' ``RDPAccountant`` or ``PRVAccountant`` (``dp-accountant``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

__all__ = ["ACCOUNTANT_CLASSES", "STATE_KEY", "PrivacyHistory"]

STATE_KEY = "edgeflower.dp"
"""Key of the history's ConfigRecord in ``context.state``."""

ACCOUNTANT_CLASSES: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
"""Opacus accountant by ``dp-accountant`` name."""


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """Opacus' RDP of one subsampled Gaussian step at its default orders (cached: the history repeats it)."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    return tuple(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders))


def _rdp_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    """What ``RDPAccountant.get_epsilon`` computes for ``entries`` (``compute_rdp`` is linear in the steps), with
    the per-step RDP of each ``(noise, rate)`` cached."""
    rdp = sum(np.asarray(_rdp_per_step(noise, rate)) * steps for noise, rate, steps in entries)
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


@dataclass
class PrivacyHistory:
    """A list of ``(noise_multiplier, sample_rate, steps)`` DP-SGD releases.

    Attributes
    ----------
    entries : list of tuple
        The releases, in order (the device's and, in ``full`` mode, the edge server's).
    """

    entries: list[tuple[float, float, int]] = field(default_factory=list)

    def add(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Record ``steps`` steps of a Gaussian mechanism subsampled at ``sample_rate``."""
        if steps <= 0:
            return
        if self.entries and self.entries[-1][:2] == (float(noise_multiplier), float(sample_rate)):
            last = self.entries[-1]
            self.entries[-1] = (last[0], last[1], last[2] + int(steps))
        else:
            self.entries.append((float(noise_multiplier), float(sample_rate), int(steps)))

    @property
    def steps(self) -> int:
        """Total steps recorded."""
        return sum(e[2] for e in self.entries)

    def accountant(self, kind: str = "rdp") -> IAccountant:
        """An Opacus accountant (``"rdp"`` or ``"prv"``) holding this history."""
        acc = ACCOUNTANT_CLASSES[kind]()
        acc.history = list(self.entries)
        return acc

    def epsilon(self, delta: float, kind: str = "rdp") -> float:
        """Epsilon spent so far at ``delta`` by accountant ``kind`` (0 before any step)."""
        if not self.entries:
            return 0.0
        if kind == "rdp":
            return _rdp_epsilon(self.entries, delta)
        return float(self.accountant(kind).get_epsilon(delta))

    def epsilon_after(self, delta: float, more: list[tuple[float, float, int]], kind: str = "rdp") -> float:
        """Epsilon after the releases ``more`` are added too."""
        after = PrivacyHistory(list(self.entries))
        for entry in more:
            after.add(*entry)
        return after.epsilon(delta, kind)

    def to_record(self) -> ConfigRecord:
        """As a ConfigRecord of parallel lists."""
        return ConfigRecord(
            {
                "noise-multiplier": [e[0] for e in self.entries],
                "sample-rate": [e[1] for e in self.entries],
                "steps": [e[2] for e in self.entries],
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> PrivacyHistory:
        """Parse a record written by :meth:`to_record` (validated: finite, positive values)."""
        noise = list(record.get("noise-multiplier", []))  # type: ignore[arg-type]
        rate = list(record.get("sample-rate", []))  # type: ignore[arg-type]
        steps = list(record.get("steps", []))  # type: ignore[arg-type]
        if not len(noise) == len(rate) == len(steps):
            raise ValueError("privacy history lists have different lengths")
        entries = []
        for s, q, n in zip(noise, rate, steps, strict=True):
            if not (math.isfinite(float(s)) and s >= 0 and 0 < q <= 1 and int(n) >= 0):
                raise ValueError(f"invalid privacy history entry {(s, q, n)}")
            entries.append((float(s), float(q), int(n)))
        return cls(entries)

    @classmethod
    def load(cls, state: RecordDict) -> PrivacyHistory:
        """The node's history from ``context.state`` (empty if none yet)."""
        if STATE_KEY not in state:
            return cls()
        return cls.from_record(state.config_records[STATE_KEY])

    def save(self, state: RecordDict) -> None:
        """Store into ``context.state``."""
        state[STATE_KEY] = self.to_record()
