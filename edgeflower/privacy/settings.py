"""The DP run-config values: validation (failing fast by key name) and noise calibration."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

__all__ = [
    "ACCOUNTANTS",
    "BATCHNORM_POLICIES",
    "CENTRAL_DP",
    "DP_MODES",
    "DPSettings",
    "central_dp_config_error",
    "dp_config_error",
    "side_share",
    "steps_per_round",
]

DP_MODES = ("off", "device", "full")
"""``off``; ``device`` (DP-SGD on the device-side part); ``full`` (also on the edge server's tail in split modes)."""

BATCHNORM_POLICIES = ("convert", "refuse")
"""What a DP run does with a BatchNorm model."""

CENTRAL_DP = ("off", "server-fixed", "client-fixed")
"""Flower's central DP wrapper the ServerApp puts around FedAvg (``client-fixed``: nodes clip their own updates)."""

ACCOUNTANTS = ("rdp", "prv")
"""Opacus accountants a node may report epsilon with (``dp-accountant``; the other one is logged next to it)."""


def side_share(noise_multiplier: float, max_grad_norm: float, sides: int) -> tuple[float, float]:
    """Per-side DP-SGD settings when ``sides`` parts of one model are clipped and noised separately.

    Each side clips each sample's gradient to ``C / sqrt(sides)`` and adds noise of std ``sigma * C`` (so Opacus'
    per-side noise multiplier is ``sigma * sqrt(sides)``). The concatenated per-sample gradient then has norm
    ``<= C`` and the concatenated noise std ``sigma * C``: one Gaussian mechanism of multiplier ``sigma`` per step,
    exactly what ``dp = device`` is for the whole model in ``fl``.

    Returns
    -------
    tuple of float
        ``(per-side noise multiplier, per-side clipping bound)``.
    """
    root = math.sqrt(sides)
    return noise_multiplier * root, max_grad_norm / root


def dp_config_error(
    dp: str,
    noise_multiplier: float,
    max_grad_norm: float,
    target_epsilon: float,
    delta: float,
    batchnorm: str,
    norm: str,
    accountant: str = "rdp",
) -> tuple[str, str] | None:
    """Return ``(key, message)`` for the first invalid DP value, or ``None`` when they are all valid.

    ``dp-noise-multiplier = 0`` (or ``"auto"``) means "calibrate the noise from ``dp-target-epsilon``".
    """
    return (
        _choice_error(dp, accountant, batchnorm)
        or _range_error(noise_multiplier, max_grad_norm, target_epsilon, delta)
        or _requirement_error(dp, noise_multiplier, target_epsilon, delta, batchnorm, norm)
    )


def _choice_error(dp: str, accountant: str, batchnorm: str) -> tuple[str, str] | None:
    """The first DP value that is not one of its key's choices."""
    for key, value, choices in (
        ("dp", dp, DP_MODES),
        ("dp-accountant", accountant, ACCOUNTANTS),
        ("dp-batchnorm", batchnorm, BATCHNORM_POLICIES),
    ):
        if value not in choices:
            return key, f"unknown value {value!r}; expected one of {', '.join(choices)}"
    return None


def _range_error(
    noise_multiplier: float, max_grad_norm: float, target_epsilon: float, delta: float
) -> tuple[str, str] | None:
    """The first numeric DP value out of its range (checked whatever the mode)."""
    for key, value in (("dp-noise-multiplier", noise_multiplier), ("dp-target-epsilon", target_epsilon)):
        if not math.isfinite(value) or value < 0:
            return key, f"must be >= 0, got {value!r}"
    if not math.isfinite(max_grad_norm) or max_grad_norm <= 0:
        return "dp-max-grad-norm", f"must be > 0, got {max_grad_norm!r}"
    if not math.isfinite(delta) or not 0 <= delta < 1:
        return "dp-delta", f"must be in (0, 1), got {delta!r}"
    return None


def _requirement_error(
    dp: str, noise_multiplier: float, target_epsilon: float, delta: float, batchnorm: str, norm: str
) -> tuple[str, str] | None:
    """What a run with DP on needs: a delta, a noise multiplier or a budget to calibrate it, and a trainable norm."""
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


def central_dp_config_error(kind: str, noise_multiplier: float, target_epsilon: float) -> tuple[str, str] | None:
    """``(key, message)`` for an invalid central-DP value, else ``None``.

    Flower's accountant needs a positive noise multiplier; a budget without central DP is a mistake too.
    """
    if kind not in CENTRAL_DP:
        return "central-dp", f"unknown value {kind!r}; expected one of {', '.join(CENTRAL_DP)}"
    if not math.isfinite(target_epsilon) or target_epsilon < 0:
        return "central-dp-target-epsilon", f"must be >= 0, got {target_epsilon!r}"
    if target_epsilon > 0 and kind == "off":
        return "central-dp-target-epsilon", 'is set but central-dp is "off"'
    if target_epsilon > 0 and not noise_multiplier > 0:
        return "central-dp-noise-multiplier", "must be > 0 to account a central-dp-target-epsilon"
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
        Per-sample clipping bound ``C`` (of the whole private part: head and tail together in ``full``).
    target_epsilon : float
        The node's budget over the run (``0`` = no budget: train every round, just report epsilon).
    delta : float
        The ``delta`` of ``(epsilon, delta)``-DP.
    accountant : str
        ``"rdp"`` or ``"prv"``: the Opacus accountant that reports epsilon, calibrates the noise and stops the
        node at its budget.
    compare : bool
        Also compute the other accountant's epsilon every round, for the log and the ``dp-epsilon-*`` metrics
        (PRV costs about a second per round on a small CPU; ``False`` reports ``-1`` for the other one).
    """

    mode: str = "off"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float = 0.0
    delta: float = 0.0
    accountant: str = "rdp"
    compare: bool = True

    @property
    def enabled(self) -> bool:
        """Whether DP-SGD is on."""
        return self.mode != "off"

    def tail_private(self, split: bool) -> bool:
        """Whether the edge server's tail is trained with DP-SGD too (``full`` in a split round)."""
        return self.mode == "full" and split

    def scope(self, split: bool) -> str:
        """What the node's epsilon covers: ``"model"`` (the whole published model) or ``"head"`` (``device`` in a
        split round: the tail is trained without DP and published as is)."""
        return "head" if self.mode == "device" and split else "model"

    def noise_for(self, sample_rate: float, total_steps: int) -> float:
        """The noise multiplier to use: the configured one, or calibrated with the run's accountant so that
        ``total_steps`` DP-SGD steps (one subsampled Gaussian mechanism each, in every mode) stay within
        ``target_epsilon``."""
        if self.noise_multiplier > 0:
            return self.noise_multiplier
        return _calibrated(self.target_epsilon, self.delta, sample_rate, total_steps, self.accountant)


@functools.lru_cache(maxsize=64)
def _calibrated(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus' noise calibration (cached: a node asks again every round with the same arguments)."""
    from edgeflower.privacy._opacus import load_opacus

    load_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )
