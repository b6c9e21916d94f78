"""Opacus compatibility of zoo models: BatchNorm conversion (or refusal), no in-place activations."""

from __future__ import annotations

from logging import INFO

from flwr.common.logger import log
from torch import nn

__all__ = ["converts_batchnorm", "dp_norm", "log_conversion", "prepare_model"]


def dp_norm(norm: str, batchnorm: str) -> str:
    """The normalisation a DP run builds: ``"batch"`` becomes ``"group"`` under ``dp-batchnorm = convert``.

    The conversion is done on the *spec* (not with :meth:`ModuleValidator.fix` on a built module) so that the
    :class:`~edgeflower.models.splittable.ModelSpec` describes the converted model and every party that rebuilds it
    from the spec (the ServerApp, each ClientApp, the edge server's tail) builds the same architecture. Like
    ``ModuleValidator.fix`` it replaces every ``BatchNorm`` by a ``GroupNorm`` over the same channels (with the zoo's
    group count, ``gcd(channels, 8)``).

    Raises
    ------
    ValueError
        ``norm == "batch"`` and ``batchnorm == "refuse"``.
    """
    if norm != "batch":
        return norm
    if batchnorm == "refuse":
        raise ValueError('BatchNorm cannot be trained with DP-SGD; set norm = "group" or dp-batchnorm = "convert"')
    return "group"


def converts_batchnorm(dp: str, norm: str) -> bool:
    """Whether a run with ``dp`` and ``norm`` builds GroupNorm where the model asks for BatchNorm."""
    return dp != "off" and norm == "batch"


def log_conversion(model_name: str) -> None:
    """Say that this DP run converts BatchNorm to GroupNorm.

    Called once per run, by the ServerApp: every process that builds the model (the CLI validating the config, the
    ServerApp, each ClientApp actor) converts it, but the run converts it once.
    """
    log(
        INFO,
        "dp: %s uses BatchNorm, which Opacus cannot train with per-sample gradients; converted to GroupNorm "
        '(dp-batchnorm = "convert"; set norm = "group" to silence this or dp-batchnorm = "refuse" to fail)',
        model_name,
    )


def prepare_model(module: nn.Module) -> nn.Module:
    """Make ``module`` ready for Opacus' per-sample gradient hooks, in place, and return it.

    In-place activations are switched off (an in-place op on a hooked module's output breaks the backward hooks;
    this changes neither the architecture nor the state dict), then :meth:`ModuleValidator.validate` must pass.

    Raises
    ------
    ValueError
        The module has layers Opacus cannot handle (e.g. BatchNorm), with Opacus' reasons.
    """
    for sub in module.modules():
        if getattr(sub, "inplace", False):
            sub.inplace = False  # type: ignore[assignment]
    from edgeflower.privacy._opacus import load_opacus

    load_opacus()
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        raise ValueError(f"model is not compatible with DP-SGD: {'; '.join(str(e) for e in errors[:3])}")
    return module
