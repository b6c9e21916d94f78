"""A channel-level dependency graph of a BN-folded model.

:func:`trace` walks the zoo's module structure (``Sequential`` chains, ResNet ``BasicBlock``, MobileNetV2
``InvertedResidual``) and records every operation that touches channels: convolutions, linear layers,
element-wise activations, pools, flatten and residual additions. Tensors joined by channel-wise operations
(activation, pool, flatten, addition, depthwise convolution) must keep the same channels; :meth:`Graph.groups`
returns those coupled sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock

from edgeflower.pruning.errors import SurgeryError

__all__ = ["Graph", "Op", "TensorInfo", "is_depthwise", "trace"]

OpKind = Literal["conv", "linear", "act", "pool", "flatten", "add"]


@dataclass
class TensorInfo:
    """One intermediate tensor: its channel count and, after a flatten, the features per channel."""

    channels: int
    spatial: int = 1


@dataclass
class Op:
    """One operation: ``kind`` reads ``inputs`` (tensor ids) and writes ``output``."""

    kind: OpKind
    inputs: tuple[int, ...]
    output: int
    path: str = ""
    module: nn.Module | None = None
    act: str = ""


@dataclass
class Graph:
    """Tensors and operations in execution order; tensor ``input`` is the model input, ``output`` its result."""

    tensors: list[TensorInfo] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    input: int = 0
    output: int = 0

    def new(self, channels: int, spatial: int = 1) -> int:
        """Add a tensor and return its id."""
        self.tensors.append(TensorInfo(channels, spatial))
        return len(self.tensors) - 1

    def consumers(self, tensor: int) -> list[Op]:
        """Operations that read ``tensor``."""
        return [op for op in self.ops if tensor in op.inputs]

    def groups(self) -> list[list[int]]:
        """Sets of tensors that must keep identical channels (union-find over channel-wise operations)."""
        parent = list(range(len(self.tensors)))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for op in self.ops:
            coupled = op.kind in ("act", "pool", "flatten", "add") or (op.kind == "conv" and is_depthwise(op.module))
            if coupled:
                for t in op.inputs:
                    parent[find(t)] = find(op.output)
        out: dict[int, list[int]] = {}
        for t in range(len(self.tensors)):
            out.setdefault(find(t), []).append(t)
        for members in out.values():
            sizes = {self.tensors[t].channels for t in members}
            if len(sizes) != 1:
                raise SurgeryError(f"coupled tensors disagree on channel counts {sorted(sizes)}")
        return list(out.values())


def is_depthwise(module: nn.Module | None) -> bool:
    """True for a convolution with one group per input channel and as many outputs."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


class _Tracer:
    def __init__(self, flatten_spatial: dict[int, int]) -> None:
        self.g = Graph()
        self.flatten_spatial = flatten_spatial

    def op(self, kind: OpKind, inputs: tuple[int, ...], channels: int, **kw: object) -> int:
        spatial = int(kw.pop("spatial", 1))  # type: ignore[call-overload]
        out = self.g.new(channels, spatial)
        self.g.ops.append(Op(kind, inputs, out, **kw))  # type: ignore[arg-type]
        return out

    def walk(self, m: nn.Module, path: str, t: int) -> int:
        pre = f"{path}." if path else ""
        ch = self.g.tensors[t].channels
        if isinstance(m, BasicBlock):
            o = self.walk(m.conv1, pre + "conv1", t)
            o = self.walk(m.bn1, pre + "bn1", o)
            o = self.op("act", (o,), self.g.tensors[o].channels, act="relu")
            o = self.walk(m.conv2, pre + "conv2", o)
            o = self.walk(m.bn2, pre + "bn2", o)
            skip = self.walk(m.downsample, pre + "downsample", t) if m.downsample is not None else t
            s = self.op("add", (o, skip), self.g.tensors[o].channels)
            return self.op("act", (s,), self.g.tensors[s].channels, act="relu")
        if isinstance(m, InvertedResidual):
            o = self.walk(m.conv, pre + "conv", t)
            return self.op("add", (t, o), ch) if m.use_res_connect else o
        blocks = getattr(m, "blocks", None)
        if isinstance(blocks, (nn.ModuleList, nn.ModuleDict)) and not isinstance(m, nn.Sequential):
            for name, child in blocks.named_children():
                t = self.walk(child, f"{pre}blocks.{name}", t)
            return t
        if isinstance(m, (nn.Sequential, nn.ModuleList)):
            for name, child in m.named_children():
                t = self.walk(child, pre + name, t)
            return t
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise SurgeryError(f"{path}: only integer zero padding is supported")
            if m.groups != 1 and not is_depthwise(m):
                raise SurgeryError(f"{path}: grouped convolutions other than depthwise are not supported")
            if m.in_channels != ch:
                raise SurgeryError(f"{path}: expects {m.in_channels} channels, the graph has {ch}")
            return self.op("conv", (t,), m.out_channels, path=path, module=m)
        if isinstance(m, nn.Linear):
            info = self.g.tensors[t]
            if m.in_features != info.channels * info.spatial:
                raise SurgeryError(f"{path}: expects {m.in_features} features, the graph has {ch}x{info.spatial}")
            return self.op("linear", (t,), m.out_features, path=path, module=m)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return t
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            return self.op("act", (t,), ch, act="relu6" if isinstance(m, nn.ReLU6) else "relu")
        if isinstance(m, (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return self.op("pool", (t,), ch)
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or id(m) not in self.flatten_spatial:
                raise SurgeryError(f"{path}: only Flatten(start_dim=1) on a traced input is supported")
            return self.op("flatten", (t,), ch, spatial=self.flatten_spatial[id(m)])
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise SurgeryError(f"{path}: BatchNorm not folded (call fuse_batchnorm first)")
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            raise SurgeryError(
                f"{path}: {type(m).__name__} couples channels and cannot be folded; "
                "surgery supports models built with norm='batch' or norm='none'"
            )
        raise SurgeryError(f"{path}: unsupported module {type(m).__name__}")


@torch.no_grad()
def trace(model: nn.Module, in_shape: tuple[int, ...]) -> Graph:
    """Build the channel graph of a BN-folded ``model`` for one input sample of shape ``in_shape``.

    Raises
    ------
    SurgeryError
        For a module the graph does not know (the message names its path).
    """
    spatial: dict[int, int] = {}

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        spatial[id(mod)] = int(x[0].numel() // x.shape[1]) if x.dim() > 2 else 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Flatten)]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *in_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    tracer = _Tracer(spatial)
    g = tracer.g
    g.input = g.new(int(in_shape[0]))
    g.output = tracer.walk(model, "", g.input)
    return g
