"""The splittable model zoo (VGG5 (FedAdapt), VGG-8/11/16, ResNet-18, MobileNetV2) and the one model resolver.

:func:`build_model` is the only place models are built: a zoo name, or an import reference
``"package.module:callable"`` to the user's own factory (see :mod:`edgeflower.models.reference`), made splittable
with :func:`edgeflower.models.fx.splittable`.

Every builder is input-shape agnostic (``in_shape`` is ``(C, H, W)``; 1x28x28 and 3x32x32 are tested) and takes a
normalisation option: ``"batch"`` (BatchNorm), ``"group"`` (GroupNorm, works with Opacus) or ``"none"``.
ResNet-18 and MobileNetV2 are assembled from torchvision's own building blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from edgeflower.models.fx import splittable
from edgeflower.models.reference import (
    ModelReferenceError,
    check_trusted,
    factory_kwargs,
    is_reference,
    resolve_reference,
)
from edgeflower.models.splittable import ModelSpec, SplittableModel

__all__ = ["MODEL_BUILDERS", "NORMS", "available_models", "build_model", "model_fingerprint", "norm_layer"]

NORMS = ("batch", "group", "none")


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """Return a factory ``channels -> normalisation module`` for ``kind`` in :data:`NORMS`."""
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return lambda c: nn.GroupNorm(math.gcd(c, 8), c)
    if kind == "none":
        return lambda c: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: expected one of {', '.join(NORMS)}")


def _out_shape(blocks: Sequence[nn.Module], in_shape: Sequence[int]) -> torch.Size:
    """Shape of one sample after running ``blocks`` (computed on a zero input in eval mode)."""
    x = torch.zeros(1, *in_shape)
    with torch.no_grad():
        for b in blocks:
            was_training = b.training
            b.eval()
            x = b(x)
            b.train(was_training)
    return x.shape[1:]


def _conv_block(cin: int, cout: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), norm(cout), nn.ReLU(inplace=True))


_VGG_FEATURES: dict[tuple[object, ...], int] = {}
"""Flattened feature size after a VGG's convolutions, by ``(cfg, width, norm, in_shape)``."""


def _vgg(
    cfg: Sequence[int | str],
    fc: Sequence[int],
    spec: ModelSpec,
) -> SplittableModel:
    norm = norm_layer(spec.norm)
    width = float(spec.options.get("width", 1.0))  # type: ignore[arg-type]
    blocks: list[nn.Module] = []
    names: list[str] = []
    cin = spec.in_shape[0]
    nconv = npool = 0
    for item in cfg:
        if item == "M":
            npool += 1
            blocks.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            names.append(f"pool{npool}")
        else:
            cout = max(1, round(int(item) * width))
            nconv += 1
            blocks.append(_conv_block(cin, cout, norm))
            names.append(f"conv{nconv}")
            cin = cout
    key = (tuple(cfg), width, spec.norm, tuple(spec.in_shape))
    features = _VGG_FEATURES.get(key)
    if features is None:  # shape inference runs once per architecture: tiny forwards are slow on a busy machine
        if len(_VGG_FEATURES) >= 256:
            _VGG_FEATURES.clear()
        features = _VGG_FEATURES[key] = math.prod(_out_shape(blocks, spec.in_shape))
    widths = [max(1, round(h * width)) for h in fc]
    for i, hidden in enumerate(widths):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
        blocks.append(nn.Sequential(*layers))
        names.append(f"fc{i + 1}")
        features = hidden
    last: list[nn.Module] = [] if widths else [nn.Flatten()]
    blocks.append(nn.Sequential(*last, nn.Linear(features, spec.num_classes)))
    names.append(f"fc{len(widths) + 1}")
    return SplittableModel(blocks, spec, names)


_VGG_CFGS: dict[str, tuple[list[int | str], list[int]]] = {
    # FedAdapt's VGG5: conv32, pool, conv64, pool, conv64, fc128, fc-classes.
    "vgg5": ([32, "M", 64, "M", 64], [128]),
    # 5 conv + 3 fc.
    "vgg8": ([64, "M", 128, "M", 256, "M", 512, "M", 512, "M"], [512, 512]),
    "vgg11": ([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], [512, 512]),
    "vgg16": (
        [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
        [512, 512],
    ),
}


def _resnet18(spec: ModelSpec) -> SplittableModel:
    norm = norm_layer(spec.norm)
    base = int(spec.options.get("width", 64))  # type: ignore[arg-type]
    cin, h = spec.in_shape[0], spec.in_shape[1]
    small = h <= 64
    if small:
        stem: nn.Module = nn.Sequential(nn.Conv2d(cin, base, 3, 1, 1, bias=False), norm(base), nn.ReLU(inplace=True))
    else:
        stem = nn.Sequential(
            nn.Conv2d(cin, base, 7, 2, 3, bias=False),
            norm(base),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    from torchvision.models.resnet import BasicBlock  # here: importing torchvision costs seconds

    blocks: list[nn.Module] = [stem]
    names = ["stem"]
    inplanes = base
    for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
        planes = base * mult
        for j in range(2):
            s = stride if j == 0 else 1
            down = None
            if s != 1 or inplanes != planes:
                down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, s, bias=False), norm(planes))
            blocks.append(BasicBlock(inplanes, planes, s, down, norm_layer=norm))
            names.append(f"layer{stage}.{j}")
            inplanes = planes
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, spec.num_classes)))
    names.append("fc")
    return SplittableModel(blocks, spec, names)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _mobilenetv2(spec: ModelSpec) -> SplittableModel:
    from torchvision.models.mobilenetv2 import InvertedResidual  # here: importing torchvision costs seconds
    from torchvision.ops.misc import Conv2dNormActivation

    norm = norm_layer(spec.norm)
    width = float(spec.options.get("width", 1.0))  # type: ignore[arg-type]
    small = spec.in_shape[1] <= 64
    settings = [
        [1, 16, 1, 1],
        [6, 24, 2, 2],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    if small:  # CIFAR-style: keep more resolution for 28-32 px inputs
        settings[1][3] = 1
    cin = _make_divisible(32 * width)
    last = _make_divisible(1280 * max(1.0, width))
    blocks: list[nn.Module] = [
        Conv2dNormActivation(
            spec.in_shape[0], cin, 3, stride=1 if small else 2, norm_layer=norm, activation_layer=nn.ReLU6
        )
    ]
    names = ["stem"]
    for t, c, n, s in settings:
        cout = _make_divisible(c * width)
        for i in range(n):
            blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, norm_layer=norm))
            names.append(f"ir{len(names)}")
            cin = cout
    blocks.append(Conv2dNormActivation(cin, last, 1, norm_layer=norm, activation_layer=nn.ReLU6))
    names.append("conv_last")
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, spec.num_classes)))
    names.append("fc")
    return SplittableModel(blocks, spec, names)


MODEL_BUILDERS: dict[str, Callable[[ModelSpec], SplittableModel]] = {
    **{name: (lambda spec, c=cfg: _vgg(c[0], c[1], spec)) for name, cfg in _VGG_CFGS.items()},
    "resnet18": _resnet18,
    "mobilenetv2": _mobilenetv2,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODEL_BUILDERS)


def _build_reference(spec: ModelSpec, from_peer: bool) -> SplittableModel:
    if from_peer:
        check_trusted(spec.name)
    factory = resolve_reference(spec.name)
    offered = {"in_shape": tuple(spec.in_shape), "num_classes": spec.num_classes, "norm": spec.norm}
    kwargs = factory_kwargs(factory, offered, dict(spec.options))
    try:
        module = factory(**kwargs)
    except TypeError as exc:
        raise ModelReferenceError(
            f"model reference {spec.name!r} cannot be called with {sorted(kwargs)}: {exc}"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ModelReferenceError(f"model reference {spec.name!r} returned {type(module).__name__}, not an nn.Module")
    example = torch.zeros(2, *spec.in_shape)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(example)
    except RuntimeError as exc:
        raise ModelReferenceError(
            f"model {spec.name!r} does not accept inputs of shape {list(spec.in_shape)}: {exc}"
        ) from exc
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        got = list(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelReferenceError(
            f"model {spec.name!r} maps inputs {list(spec.in_shape)} to outputs {got}, "
            f"the spec says {spec.num_classes} classes"
        )
    if isinstance(module, SplittableModel):
        module.spec = spec
        return module
    return splittable(module, example, spec)


def model_fingerprint(model: nn.Module) -> dict[str, object]:
    """Parameter count and state-dict shapes of a model: what two processes compare to agree on one model.

    Parameters
    ----------
    model : nn.Module
        The model.
    """
    sd = model.state_dict()
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "shapes": {k: list(v.shape) for k, v in sd.items()},
    }


def build_model(
    name: str | ModelSpec,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    norm: str = "batch",
    *,
    from_peer: bool = False,
    **options: object,
) -> SplittableModel:
    """Build a model: a zoo model by name, or the user's own by import reference.

    Parameters
    ----------
    name : str or ModelSpec
        One of :func:`available_models`, an import reference ``"package.module:callable"`` (a class or function
        returning an ``nn.Module``; it receives the spec's options as keyword arguments, and ``in_shape``,
        ``num_classes`` and ``norm`` if it has parameters of those names), or a complete :class:`ModelSpec`.
    in_shape : sequence of int
        One input sample's ``(C, H, W)``.
    num_classes : int
        Number of classes.
    norm : str
        ``"batch"``, ``"group"`` or ``"none"``.
    from_peer : bool
        The name came from a network peer: build an import reference only if this process trusts it
        (:func:`~edgeflower.models.reference.trust_reference`). Zoo names are always allowed.
    **options
        Builder options, e.g. ``width`` (channel multiplier for VGG/MobileNetV2, base width for ResNet-18).

    Returns
    -------
    SplittableModel
        The model, in training mode; a reference's model is checked to map ``in_shape`` to ``num_classes``.

    Raises
    ------
    ValueError
        For an unknown zoo name, an invalid shape, or a reference that is malformed, not importable, not trusted
        (``from_peer``), not traceable or whose output does not fit the spec (a :class:`ModelReferenceError` or
        :class:`~edgeflower.models.fx.TraceError`, both ``ValueError``).
    """
    spec = name if isinstance(name, ModelSpec) else ModelSpec(name, tuple(in_shape), num_classes, norm, options)
    if is_reference(spec.name):
        if len(spec.in_shape) < 1 or min(spec.in_shape) < 1 or spec.num_classes < 1:
            raise ValueError(f"invalid spec for {spec.name!r}: in_shape {spec.in_shape!r}, {spec.num_classes} classes")
        return _build_reference(spec, from_peer)
    if spec.name not in MODEL_BUILDERS:
        raise ValueError(
            f"unknown model {spec.name!r}: expected one of {', '.join(available_models())} "
            "or an import reference 'package.module:callable'"
        )
    if len(spec.in_shape) != 3 or min(spec.in_shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W) with positive sizes, got {spec.in_shape!r}")
    if spec.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {spec.num_classes}")
    norm_layer(spec.norm)  # validates
    return MODEL_BUILDERS[spec.name](spec)
