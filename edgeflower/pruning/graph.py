"""The channel-level dependency graph of a BN-folded model, built from its ``torch.fx`` trace.

:func:`trace` traces the model (see :func:`edgeflower.models.fx.trace_module`), runs it once on a zero input to
learn every value's shape, and records each operation that touches channels: convolutions, linear layers,
element-wise functions (ReLU, ReLU6, SiLU, Hardswish, GELU, Hardsigmoid, sigmoid, tanh, arithmetic with a
number), pools, flatten, residual additions, channel-wise products (squeeze-and-excitation) and concatenation
along channels. Anything else that produces a tensor is refused with a :class:`SurgeryError` naming it: surgery
only removes a channel when it can prove, from the data flow, where that channel goes.

Channels joined by channel-wise operations must be removed together; :meth:`Graph.channel_groups` numbers those
coupled sets (channel ``c`` of an activation's input and output, channel ``offset + c`` of a concatenation and
channel ``c`` of its ``i``-th input, ...).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torchvision.ops import StochasticDepth

from edgeflower.models.fx import TraceError, trace_module
from edgeflower.pruning.errors import SurgeryError

__all__ = ["Graph", "Op", "TensorInfo", "is_depthwise", "trace"]

OpKind = Literal["conv", "linear", "act", "pool", "flatten", "add", "mul", "cat"]

_ACT_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.GELU,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
)
_ACT_FUNCTIONS: dict[object, Callable[..., torch.Tensor]] = {
    F.relu: F.relu,
    torch.relu: torch.relu,
    F.relu6: F.relu6,
    F.silu: F.silu,
    F.hardswish: F.hardswish,
    F.gelu: F.gelu,
    F.hardsigmoid: F.hardsigmoid,
    torch.sigmoid: torch.sigmoid,
    F.sigmoid: torch.sigmoid,
    torch.tanh: torch.tanh,
    F.tanh: torch.tanh,
}
_ACT_METHODS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu_": torch.relu}
_POOL_MODULES = (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d)
_POOL_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d)
_ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, StochasticDepth)  # identities in eval mode
_ALIAS_FUNCTIONS = (F.dropout, F.dropout2d)
_ALIAS_METHODS = ("contiguous", "clone")
_ADD = (operator.add, operator.iadd, torch.add, "add", "add_", "__add__")
_MUL = (operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__")
_SCALAR_ARITH: dict[object, Callable[[torch.Tensor, float], torch.Tensor]] = {
    operator.truediv: operator.truediv,
    operator.sub: operator.sub,
    "div": operator.truediv,
    "sub": operator.sub,
}
_IGNORED = (torch._assert, getattr, operator.getitem, "size", "dim")


@dataclass
class TensorInfo:
    """One intermediate tensor: its channel count and, after a flatten, the features per channel."""

    channels: int
    spatial: int = 1


@dataclass
class Op:
    """One operation: ``kind`` reads ``inputs`` (tensor ids) and writes ``output``.

    ``fn`` maps a channel's constant value through an element-wise op; ``exact_constants`` is false for a pool
    whose padding changes a constant channel at the borders (only zero stays zero).
    """

    kind: OpKind
    inputs: tuple[int, ...]
    output: int
    path: str = ""
    module: nn.Module | None = None
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    exact_constants: bool = True


@dataclass
class Graph:
    """Tensors and operations in execution order; tensor ``input`` is the model input, ``output`` its result."""

    tensors: list[TensorInfo] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    input: int = 0
    output: int = 0
    fixed: list[int] = field(default_factory=list)
    """Tensors whose channel count the forward code fixes (e.g. ``x.view(-1, 400)``): no channel is removed."""

    def new(self, channels: int, spatial: int = 1) -> int:
        """Add a tensor and return its id."""
        self.tensors.append(TensorInfo(channels, spatial))
        return len(self.tensors) - 1

    def consumers(self, tensor: int) -> list[Op]:
        """Operations that read ``tensor``."""
        return [op for op in self.ops if tensor in op.inputs]

    def channel_groups(self) -> list[torch.Tensor]:
        """Per tensor, the group id of each of its channels; coupled channels share an id (ids are ``0..G-1``)."""
        base = [0]
        for t in self.tensors:
            base.append(base[-1] + t.channels)
        label = torch.arange(base[-1])
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

        def ids(t: int, offset: int = 0, count: int | None = None) -> torch.Tensor:
            n = self.tensors[t].channels if count is None else count
            return torch.arange(base[t] + offset, base[t] + offset + n)

        for op in self.ops:
            if op.kind == "cat":
                offset = 0
                for t in op.inputs:
                    c = self.tensors[t].channels
                    pairs.append((ids(t), ids(op.output, offset, c)))
                    offset += c
            elif op.kind in ("act", "pool", "flatten", "add", "mul") or (op.kind == "conv" and is_depthwise(op.module)):
                for t in op.inputs:
                    pairs.append((ids(t), ids(op.output)))
        _, dense = torch.unique(_merge_labels(label, pairs), return_inverse=True)
        return [dense[base[t] : base[t + 1]] for t in range(len(self.tensors))]


def _merge_labels(label: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Give every channel the smallest label of the channels it is coupled with (through any chain of pairs)."""
    changed = True
    while changed:
        changed = False
        for a, b in pairs:
            m = torch.minimum(label[a], label[b])
            if not (torch.equal(m, label[a]) and torch.equal(m, label[b])):
                label[a] = m
                label[b] = m
                changed = True
        while True:  # pointer jumping (labels only point into their own group) keeps the sweeps few
            jumped = label[label]
            if torch.equal(jumped, label):
                break
            label = jumped
    return label


def is_depthwise(module: nn.Module | None) -> bool:
    """True for a convolution with one group per input channel and as many outputs."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _describe(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)
    module = getattr(target, "__module__", None)
    where = f" ({node.stack_trace.strip().splitlines()[-1].strip()})" if node.stack_trace else ""
    of = ""
    if target in (getattr, operator.getitem) and node.args and isinstance(node.args[0], fx.Node):
        of = f" of the result of {_describe(node.args[0])}"
    return f"{node.op} {module + '.' if module and node.op == 'call_function' else ''}{name}{where}{of}"


def _unsupported(path: str, m: nn.Module) -> SurgeryError:
    """Why surgery refuses module ``m`` at ``path``."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return SurgeryError(
            f"{path}: {type(m).__name__} does not directly follow a convolution, so it cannot be folded"
        )
    if isinstance(m, nn.GroupNorm | nn.LayerNorm):
        return SurgeryError(
            f"{path}: {type(m).__name__} couples channels and cannot be folded; "
            "surgery supports models with BatchNorm after convolutions or without normalisation"
        )
    return SurgeryError(f"{path}: unsupported module {type(m).__name__} (its data flow is not known)")


class _Builder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.g = Graph()
        self.env: dict[fx.Node, int] = {}
        self.called: set[str] = set()

    def tensor(self, node: fx.Node, arg: object) -> int:
        if isinstance(arg, fx.Node) and arg in self.env:
            return self.env[arg]
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            raise SurgeryError(f"{node.name}: reads the parameter or buffer {arg.target!r} directly in forward")
        raise SurgeryError(f"{node.name}: cannot follow the data flow of input {arg!r} of {_describe(node)}")

    def op(self, node: fx.Node, kind: OpKind, inputs: tuple[int, ...], **kw: Any) -> None:
        shape = _shape(node)
        assert shape is not None
        channels = int(kw.pop("channels", shape[1] if len(shape) > 1 else 1))
        spatial = int(kw.pop("spatial", 1))
        out = self.g.new(channels, spatial)
        self.g.ops.append(Op(kind, inputs, out, **kw))
        self.env[node] = out

    def alias(self, node: fx.Node, arg: object) -> None:
        self.env[node] = self.tensor(node, arg)

    def module(self, node: fx.Node) -> None:
        path = str(node.target)
        m = self.gm.get_submodule(path)
        x = node.args[0] if node.args else None
        if isinstance(m, nn.Conv2d | nn.Linear):
            self.weighted(node, path, m, x)
        elif isinstance(m, _ALIAS_MODULES):
            self.alias(node, x)
        elif isinstance(m, _ACT_MODULES):
            self.op(node, "act", (self.tensor(node, x),), fn=m)
        elif isinstance(m, _POOL_MODULES):
            padded = isinstance(m, nn.AvgPool2d) and m.padding not in (0, (0, 0)) and m.count_include_pad
            self.op(node, "pool", (self.tensor(node, x),), exact_constants=not padded)
        elif isinstance(m, nn.Flatten):
            self.flatten(node, x, m.start_dim, m.end_dim)
        else:
            raise _unsupported(path, m)

    def weighted(self, node: fx.Node, path: str, m: nn.Conv2d | nn.Linear, x: object) -> None:
        """A convolution or linear layer: its weights are what surgery cuts, so each may be called once."""
        what = "convolution" if isinstance(m, nn.Conv2d) else "linear layer"
        if path in self.called:
            raise SurgeryError(f"{path}: the {what} is used more than once (shared weights)")
        self.called.add(path)
        t = self.tensor(node, x)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise SurgeryError(f"{path}: only integer zero padding is supported")
            if m.groups != 1 and not is_depthwise(m):
                raise SurgeryError(f"{path}: grouped convolutions other than depthwise are not supported")
            self.op(node, "conv", (t,), path=path, module=m)
            return
        info = self.g.tensors[t]
        if len(_shape(x) or ()) != 2 or m.in_features != info.channels * info.spatial:
            raise SurgeryError(f"{path}: a linear layer must read a [batch, features] tensor")
        self.op(node, "linear", (t,), path=path, module=m)

    def flatten(self, node: fx.Node, x: object, start: int = 1, end: int = -1) -> None:
        shape_in, shape_out = _shape(x), _shape(node)
        if shape_in is None or shape_out is None:
            raise SurgeryError(f"{node.name}: flatten of a non-tensor")
        if shape_in == shape_out:
            self.alias(node, x)
            return
        if start != 1 or end != -1 or len(shape_out) != 2 or len(shape_in) < 3:
            raise SurgeryError(f"{node.name}: only flattening all dimensions after the batch is supported")
        spatial = 1
        for s in shape_in[2:]:
            spatial *= s
        t = self.tensor(node, x)
        self.op(node, "flatten", (t,), channels=self.g.tensors[t].channels, spatial=spatial)

    def binary(self, node: fx.Node, kind: OpKind) -> None:
        a, b = node.args[0], node.args[1]
        if len(node.args) > 2 or node.kwargs:
            raise SurgeryError(f"{node.name}: {_describe(node)} with extra arguments is not supported")
        for v in (a, b):
            if isinstance(v, fx.Node) and _shape(v) is not None:
                self.tensor(node, v)  # refuses a parameter read in forward, or an untracked tensor
        tensors = [v for v in (a, b) if isinstance(v, fx.Node) and v in self.env]
        numbers = [v for v in (a, b) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(tensors) == 1 and len(numbers) == 1:
            c = float(numbers[0])
            fn = (lambda v: v + c) if kind == "add" else (lambda v: v * c)
            self.op(node, "act", (self.env[tensors[0]],), fn=fn)
            return
        if len(tensors) != 2:
            raise SurgeryError(f"{node.name}: cannot follow the data flow of {_describe(node)}")
        ta, tb = self.env[tensors[0]], self.env[tensors[1]]
        sa, sb, so = _shape(tensors[0]), _shape(tensors[1]), _shape(node)
        if not (sa and sb and so) or len(sa) < 2 or sa[1] != sb[1] or len(sa) != len(sb):
            raise SurgeryError(f"{node.name}: {_describe(node)} broadcasts over channels")
        self.op(node, kind, (ta, tb))

    def function(self, node: fx.Node) -> None:  # noqa: C901 (a table: one branch per torch operation surgery knows)
        t = node.target
        name = t if node.op == "call_method" else None
        x = node.args[0] if node.args else None
        if _shape(node) is None:  # shape arithmetic, assertions, tuples (a tensor taken out of one is refused)
            return
        if t in _IGNORED:
            if _shape(node) is not None:
                raise SurgeryError(f"{node.name}: {_describe(node)} produces a tensor whose channels are not known")
            return
        if t in _ACT_FUNCTIONS or name in _ACT_METHODS:
            fn = _ACT_FUNCTIONS[t] if t in _ACT_FUNCTIONS else _ACT_METHODS[str(name)]
            self.op(node, "act", (self.tensor(node, x),), fn=fn)
        elif t in _ADD:
            self.binary(node, "add")
        elif t in _MUL:
            self.binary(node, "mul")
        elif t in _SCALAR_ARITH and len(node.args) == 2 and isinstance(node.args[1], (int, float)):
            c, f = float(node.args[1]), _SCALAR_ARITH[t]  # type: ignore[arg-type]
            self.op(node, "act", (self.tensor(node, x),), fn=lambda v: f(v, c))
        elif t in _ALIAS_FUNCTIONS or name in _ALIAS_METHODS:
            self.alias(node, x)
        elif t in _POOL_FUNCTIONS:
            padding = node.kwargs.get("padding", node.args[3] if len(node.args) > 3 else 0)
            padded = t is F.avg_pool2d and padding not in (0, (0, 0))
            self.op(node, "pool", (self.tensor(node, x),), exact_constants=not padded)
        elif name == "mean" or t is torch.mean:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            if sorted(int(d) for d in (dims if isinstance(dims, (list, tuple)) else [dims])) not in ([2, 3], [-2, -1]):
                raise SurgeryError(f"{node.name}: only a mean over the spatial dimensions is supported")
            self.op(node, "pool", (self.tensor(node, x),))
        elif t is torch.flatten or name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self.flatten(node, x, 1 if start in (1, -3) or _shape(x) == _shape(node) else int(start), int(end))
        elif name in ("view", "reshape") or t is torch.reshape:
            self.flatten(node, x)
            sizes = node.args[1:] if name else node.args[1]
            sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)) else sizes
            if node in self.env and any(isinstance(v, int) and v not in (-1, 1) for v in sizes):
                self.g.fixed.append(self.env[node])  # a size written in forward: its channels must stay
        elif t is torch.cat or name == "cat":
            parts = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if not isinstance(parts, (list, tuple)) or dim not in (1, -3):
                raise SurgeryError(f"{node.name}: only concatenation along channels is supported")
            self.op(node, "cat", tuple(self.tensor(node, p) for p in parts))
        else:
            raise SurgeryError(f"{node.name}: unsupported operation {_describe(node)} (its data flow is not known)")


@torch.no_grad()
def trace(model: nn.Module, in_shape: tuple[int, ...]) -> Graph:
    """Build the channel graph of a BN-folded ``model`` for one input sample of shape ``in_shape``.

    Raises
    ------
    SurgeryError
        If the model cannot be traced, or for an operation whose data flow the graph does not know (the message
        names it and where it is).
    """
    try:
        gm = trace_module(model)
    except TraceError as exc:
        raise SurgeryError(f"cannot prove the data flow: {exc}") from exc
    was_training = model.training
    gm.eval()
    try:
        ShapeProp(gm).propagate(torch.zeros(1, *in_shape))
    finally:
        gm.train(was_training)
    b = _Builder(gm)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if b.g.tensors:
                raise SurgeryError(f"{node.name}: the model takes more than one input")
            b.g.input = b.g.new(int(in_shape[0]))
            b.env[node] = b.g.input
        elif node.op == "get_attr":
            continue  # refused where a tracked operation reads it
        elif node.op == "call_module":
            b.module(node)
        elif node.op in ("call_function", "call_method"):
            b.function(node)
        elif node.op == "output":
            b.g.output = b.tensor(node, node.args[0])
    return b.g
