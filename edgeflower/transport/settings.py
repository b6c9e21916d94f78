"""How the edge server trains a session's tail: :class:`OptimizerSettings` and, for ``dp = full``, :class:`DPParams`.

Both travel in the ``open`` request (:class:`~edgeflower.transport.messages.OpenRequest`) and in a migrated
session's state; both validate themselves on construction and when parsed from their JSON form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgeflower.transport.errors import InvalidMessageError
from edgeflower.transport.fields import float_field, int_field

__all__ = ["DPParams", "OptimizerSettings"]


@dataclass(frozen=True)
class OptimizerSettings:
    """The server-side SGD optimizer's settings (same as :func:`edgeflower.training.make_optimizer`).

    Attributes
    ----------
    lr : float
        Learning rate (> 0).
    momentum : float
        Momentum in ``[0, 1)``.
    weight_decay : float
        L2 penalty (>= 0).
    proximal_mu : float
        FedProx's proximal coefficient (>= 0): each side adds ``mu * (w - w_round_start)`` to its gradients.
    """

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        values = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}
        values["proximal_mu"] = self.proximal_mu
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values.values()
        ):
            raise InvalidMessageError(f"optimizer settings must be finite numbers, got {values}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0 and self.proximal_mu >= 0):
            raise InvalidMessageError(f"optimizer needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, got {values}")

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        out = {"lr": float(self.lr), "momentum": float(self.momentum), "weight_decay": float(self.weight_decay)}
        if self.proximal_mu:
            out["proximal_mu"] = float(self.proximal_mu)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> OptimizerSettings:
        """Parse and validate the JSON form."""
        if not isinstance(data, dict):
            raise InvalidMessageError("field 'optimizer' must be an object")
        mu = float_field(data, "proximal_mu") if "proximal_mu" in data else 0.0
        return cls(float_field(data, "lr"), float_field(data, "momentum"), float_field(data, "weight_decay"), mu)


_DP_FIELDS = ("noise_multiplier", "max_grad_norm", "expected_batch_size", "sample_rate", "delta", "seed")


@dataclass(frozen=True)
class DPParams:
    """DP-SGD settings for the edge server's tail (``dp = full``).

    Attributes
    ----------
    noise_multiplier : float
        Noise std over the clipping bound (>= 0).
    max_grad_norm : float
        Per-sample clipping bound (> 0).
    expected_batch_size : int
        ``q * N``: the noisy sum of clipped gradients is divided by it.
    sample_rate : float
        Poisson sample rate ``q`` in ``(0, 1]`` (for the session's accountant).
    delta : float
        The ``delta`` the session reports its epsilon at, in ``(0, 1)``.
    seed : int
        Seed of the noise generator; ``-1`` (the default) = a fresh random seed (a seed known to others would let
        them remove the noise: use one only in tests).
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    sample_rate: float
    delta: float
    seed: int = -1

    def __post_init__(self) -> None:
        DPParams.from_dict(self.to_dict())  # validates

    def to_dict(self) -> dict[str, float | int]:
        """JSON form."""
        return {
            "noise_multiplier": float(self.noise_multiplier),
            "max_grad_norm": float(self.max_grad_norm),
            "expected_batch_size": int(self.expected_batch_size),
            "sample_rate": float(self.sample_rate),
            "delta": float(self.delta),
            "seed": int(self.seed),
        }

    @staticmethod
    def from_dict(data: Any) -> DPParams:
        """Parse and validate the JSON form."""
        if not isinstance(data, dict):
            raise InvalidMessageError("field 'dp' must be an object")
        values = (
            float_field(data, "noise_multiplier", 0.0, 1e6),
            float_field(data, "max_grad_norm", 1e-12, 1e12),
            int_field(data, "expected_batch_size", 1, 2**31),
            float_field(data, "sample_rate", 1e-12, 1.0),
            float_field(data, "delta", 1e-300, 1.0 - 1e-12),
            int_field(data, "seed", -1, 2**63 - 1),
        )
        params = object.__new__(DPParams)  # the values are checked: skip __post_init__'s second round
        for name, value in zip(_DP_FIELDS, values, strict=True):
            object.__setattr__(params, name, value)
        return params
