"""The JSON architecture description of a surgered model, and rebuilding a model from it.

A description is the zoo :class:`~edgeflower.models.splittable.ModelSpec` plus, for every convolution and linear
layer, its shape after surgery. Rebuilding builds the zoo model, folds its BatchNorm structurally and replaces
each layer with an empty one of the described shape, so ``load_state_dict(strict=True)`` of the saved weights
never meets a size mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from edgeflower.models.splittable import ModelSpec, SplittableModel
from edgeflower.models.zoo import build_model
from edgeflower.pruning.errors import SurgeryError
from edgeflower.pruning.fusion import FoldedConv2d, fuse_batchnorm, set_module

__all__ = ["build_from_arch", "describe_arch"]


def _layer(m: nn.Module) -> dict[str, Any]:
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    assert isinstance(m, nn.Conv2d)
    return {
        "type": "folded_conv" if isinstance(m, FoldedConv2d) else "conv",
        "in": m.in_channels,
        "out": m.out_channels,
        "kernel": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": list(m.padding),  # type: ignore[arg-type]
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
    }


def describe_arch(model: nn.Module, spec: ModelSpec | None = None) -> dict[str, Any]:
    """JSON-serialisable description of a (fused, possibly surgered) zoo model.

    Parameters
    ----------
    model : nn.Module
        The model; every ``Conv2d`` and ``Linear`` is described by its module path.
    spec : ModelSpec, optional
        The zoo spec; defaults to ``model.spec``.
    """
    spec = spec or getattr(model, "spec", None)
    if spec is None:
        raise SurgeryError("the model has no zoo spec; pass spec=")
    layers = {p: _layer(m) for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return {"spec": spec.to_dict(), "fused": True, "layers": layers}


def _make(desc: Mapping[str, Any]) -> nn.Module:
    if desc["type"] == "linear":
        return nn.Linear(int(desc["in"]), int(desc["out"]), bias=bool(desc["bias"]))
    cls = FoldedConv2d if desc["type"] == "folded_conv" else nn.Conv2d
    if desc["type"] not in ("conv", "folded_conv"):
        raise ValueError(f"unknown layer type {desc['type']!r}")
    return cls(
        int(desc["in"]),
        int(desc["out"]),
        tuple(desc["kernel"]),
        stride=tuple(desc["stride"]),
        padding=tuple(desc["padding"]),
        dilation=tuple(desc["dilation"]),
        groups=int(desc["groups"]),
        bias=bool(desc["bias"]),
    )


def build_from_arch(arch: Mapping[str, Any], from_peer: bool = False) -> SplittableModel:
    """An (uninitialised) model with the described architecture, in eval mode.

    ``from_peer``: the description came from the network, so a model reference must be trusted here
    (see :func:`~edgeflower.models.build_model`).

    Raises
    ------
    ValueError
        If the description is malformed or does not fit the zoo model it names.
    """
    try:
        spec = ModelSpec.from_dict(arch["spec"])
        layers = dict(arch["layers"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"invalid architecture description: {exc}") from exc
    model = fuse_batchnorm(build_model(spec, from_peer=from_peer), inplace=True)
    paths = {p for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if set(layers) != paths:
        missing, extra = sorted(paths - set(layers)), sorted(set(layers) - paths)
        raise ValueError(f"architecture does not match {spec.name}: missing {missing[:3]}, unknown {extra[:3]}")
    for path, desc in layers.items():
        try:
            set_module(model, path, _make(desc))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid description of layer {path!r}: {exc}") from exc
    model.eval()
    return model  # type: ignore[return-value]
