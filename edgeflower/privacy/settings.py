"""The DP run-config values: validation (failing fast by key name) and noise calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass

from opacus.accountants.utils import get_noise_multiplier

__all__ = ["BATCHNORM_POLICIES", "CENTRAL_DP", "DP_MODES", "DPSettings", "dp_config_error", "steps_per_round"]

DP_MODES = ("off", "device", "full")
"""``off``; ``device`` (DP-SGD on the device-side part); ``full`` (also on the edge server's tail in split modes)."""

BATCHNORM_POLICIES = ("convert", "refuse")
"""What a DP run does with a BatchNorm model."""

CENTRAL_DP = ("off", "server-fixed", "client-fixed")
"""Flower's central DP wrapper the ServerApp puts around FedAvg (``client-fixed``: nodes clip their own updates)."""


def dp_config_error(
    dp: str,
    noise_multiplier: float,
    max_grad_norm: float,
    target_epsilon: float,
    delta: float,
    batchnorm: str,
    norm: str,
) -> tuple[str, str] | None:
    """Return ``(key, message)`` for the first invalid DP value, or ``None`` when they are all valid.

    ``dp-noise-multiplier = 0`` (or ``"auto"``) means "calibrate the noise from ``dp-target-epsilon``".
    """
    if dp not in DP_MODES:
        return "dp", f"unknown value {dp!r}; expected one of {', '.join(DP_MODES)}"
    if batchnorm not in BATCHNORM_POLICIES:
        return "dp-batchnorm", f"unknown value {batchnorm!r}; expected one of {', '.join(BATCHNORM_POLICIES)}"
    for key, value in (("dp-noise-multiplier", noise_multiplier), ("dp-target-epsilon", target_epsilon)):
        if not math.isfinite(value) or value < 0:
            return key, f"must be >= 0, got {value!r}"
    if not math.isfinite(max_grad_norm) or max_grad_norm <= 0:
        return "dp-max-grad-norm", f"must be > 0, got {max_grad_norm!r}"
    if not math.isfinite(delta) or not 0 <= delta < 1:
        return "dp-delta", f"must be in (0, 1), got {delta!r}"
    if dp == "off":
        return None
    if delta <= 0:
        return "dp-delta", f"is required when dp = {dp!r} (e.g. 1e-5, below 1 / partition size)"
    if noise_multiplier == 0 and target_epsilon == 0:
        return "dp-noise-multiplier", "is 0 ('auto'), which needs dp-target-epsilon > 0 to calibrate the noise"
    if norm == "batch" and batchnorm == "refuse":
        return "norm", (
            'BatchNorm cannot be trained with DP-SGD (per-sample gradients); use norm = "group" '
            'or dp-batchnorm = "convert"'
        )
    return None


def steps_per_round(num_samples: int, batch_size: int, local_epochs: int, max_batches: int = 0) -> int:
    """DP-SGD steps a node takes per round: ``round(N / B)`` Poisson draws per epoch (capped by ``max-batches``)."""
    per_epoch = max(1, round(num_samples / batch_size))
    if max_batches:
        per_epoch = min(per_epoch, max_batches)
    return per_epoch * local_epochs


@dataclass(frozen=True)
class DPSettings:
    """A node's DP-SGD settings for one run.

    Attributes
    ----------
    mode : str
        ``"off"``, ``"device"`` or ``"full"``.
    noise_multiplier : float
        Gaussian noise std over the clipping norm; ``0`` = calibrate from ``target_epsilon``.
    max_grad_norm : float
        Per-sample clipping bound ``C``.
    target_epsilon : float
        The node's budget over the run (``0`` = no budget: train every round, just report epsilon).
    delta : float
        The ``delta`` of ``(epsilon, delta)``-DP.
    """

    mode: str = "off"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float = 0.0
    delta: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether DP-SGD is on."""
        return self.mode != "off"

    def tail_private(self, split: bool) -> bool:
        """Whether the edge server's tail is trained with DP-SGD too (``full`` in a split round)."""
        return self.mode == "full" and split

    def noise_for(self, sample_rate: float, total_steps: int, mechanisms: int = 1) -> float:
        """The noise multiplier to use: the configured one, or calibrated so that ``mechanisms`` DP-SGD releases per
        step (2 in ``full`` split rounds: head and tail) over ``total_steps`` stay within ``target_epsilon``."""
        if self.noise_multiplier > 0:
            return self.noise_multiplier
        return float(
            get_noise_multiplier(
                target_epsilon=self.target_epsilon,
                target_delta=self.delta,
                sample_rate=sample_rate,
                steps=total_steps * mechanisms,
                accountant="rdp",
            )
        )
