"""The privacy accountant's history, kept with the node in Flower's ``context.state`` (never pickled).

Opacus' :class:`~opacus.accountants.RDPAccountant` is fully described by its history, a list of
``(noise_multiplier, sample_rate, num_steps)``. :class:`PrivacyHistory` stores it as a
:class:`~flwr.app.ConfigRecord` of three parallel lists, so epsilon accumulates across rounds (Flower's own Opacus
example builds a new PrivacyEngine every round and so reports per-round epsilon) and the history can travel with the
node (across edge servers, once migration exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, RecordDict
from opacus.accountants import RDPAccountant

__all__ = ["STATE_KEY", "PrivacyHistory"]

STATE_KEY = "edgeflower.dp"
"""Key of the history's ConfigRecord in ``context.state``."""


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
        if steps > 0:
            self.entries.append((float(noise_multiplier), float(sample_rate), int(steps)))

    @property
    def steps(self) -> int:
        """Total steps recorded."""
        return sum(e[2] for e in self.entries)

    def accountant(self) -> RDPAccountant:
        """An Opacus RDP accountant holding this history."""
        acc = RDPAccountant()
        acc.history = list(self.entries)
        return acc

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        if not self.entries:
            return 0.0
        return float(self.accountant().get_epsilon(delta))

    def epsilon_after(self, delta: float, more: list[tuple[float, float, int]]) -> float:
        """Epsilon after the releases ``more`` are added too."""
        return PrivacyHistory(self.entries + [e for e in more if e[2] > 0]).epsilon(delta)

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
