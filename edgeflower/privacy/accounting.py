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
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from edgeflower.privacy._opacus import load_opacus

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

__all__ = ["STATE_KEY", "PrivacyHistory", "accountant_class"]

# Opacus' RDP conversion warns "Optimal order is the largest alpha. Please consider expanding the range of alphas"
# whenever few steps at high noise put the best order at the edge of its default orders (every DP run's first
# rounds, and noise calibration). It does not apply here: the epsilon we report is by design the one Opacus'
# RDPAccountant computes at its default orders (what an independent Opacus accountant reproduces, see the
# accounting tests), a valid upper bound either way, and the tighter PRV figure is reported next to it
# (dp-epsilon-prv). Silenced for that message from that module only, when this module is imported.


def _silence_rdp_order_warning() -> None:
    warnings.filterwarnings(
        "ignore",
        message="Optimal order is the (largest|smallest) alpha",
        category=UserWarning,
        module="opacus.accountants.analysis.rdp",
    )


_silence_rdp_order_warning()

STATE_KEY = "edgeflower.dp"
"""Key of the history's ConfigRecord in ``context.state``."""

ACCOUNTANTS = ("rdp", "prv")
"""The ``dp-accountant`` names."""


def accountant_class(kind: str) -> type[IAccountant]:
    """Opacus' accountant class for ``dp-accountant`` name ``kind`` (imports Opacus on first use)."""
    load_opacus()
    from opacus.accountants import PRVAccountant, RDPAccountant

    classes: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
    if kind not in classes:
        raise ValueError(f"unknown accountant {kind!r}: expected one of {', '.join(ACCOUNTANTS)}")
    return classes[kind]


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """Opacus' RDP of one subsampled Gaussian step at its default orders (cached: the history repeats it)."""
    load_opacus()
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    return tuple(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders))


def _rdp_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    """What ``RDPAccountant.get_epsilon`` computes for ``entries`` (``compute_rdp`` is linear in the steps), with
    the per-step RDP of each ``(noise, rate)`` cached."""
    rdp = sum(np.asarray(_rdp_per_step(noise, rate)) * steps for noise, rate, steps in entries)
    from opacus.accountants import RDPAccountant  # loaded by _rdp_per_step
    from opacus.accountants.analysis import rdp as rdp_analysis

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
        acc = accountant_class(kind)()
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
