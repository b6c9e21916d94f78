"""Structural surgery: turn a sparse model into a smaller dense model that computes exactly the same function.

Steps (all in float64, results cast back to float32):

1. fold BatchNorm into the convolutions (:func:`~edgeflower.pruning.fusion.fuse_batchnorm`);
2. trace the channel graph (:func:`~edgeflower.pruning.graph.trace`);
3. forward pass over the graph: which channels are *constant everywhere* and their value (a filter with all-zero
   weights outputs its bias; the activation maps it to ``act(bias)``; pools keep it; an addition of two constants
   is a constant; a convolution reading a constant through zero padding is *not* constant at the borders, so it
   only yields a constant when that input is zero or the convolution has no padding);
4. decide removals per coupled channel group: a channel goes when every reader either ignores it (all-zero
   weights on it for the outputs that stay) or can absorb its constant exactly — a convolution without padding or
   a linear layer into its bias, a convolution with zero padding into a :class:`FoldedConv2d` constant kernel;
   iterate to a fixed point (removing outputs can make inputs unread);
5. rebuild every convolution and linear layer with the kept channels and the folded constants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeflower.pruning.errors import SurgeryError
from edgeflower.pruning.fusion import FoldedConv2d, fuse_batchnorm, set_module
from edgeflower.pruning.graph import Graph, Op, is_depthwise, trace

__all__ = ["SurgeryResult", "surgery"]


@dataclass
class SurgeryResult:
    """What :func:`surgery` produced.

    Attributes
    ----------
    model : nn.Module
        The smaller dense model (eval mode; same block structure as the input, BatchNorm replaced by Identity).
    channels_before, channels_after : dict of str to int
        Output channels (features) of every convolution / linear layer, by module path.
    removed : int
        Channels removed in total (summed over coupled groups).
    folded_constants : int
        Removed channels whose non-zero constant was folded into a bias or a constant kernel.
    seconds : float
        Wall-clock time of the surgery.
    """

    model: nn.Module
    channels_before: dict[str, int] = field(default_factory=dict)
    channels_after: dict[str, int] = field(default_factory=dict)
    removed: int = 0
    folded_constants: int = 0
    seconds: float = 0.0


def _weight(op: Op) -> torch.Tensor:
    return op.module.weight.detach().double()  # type: ignore[union-attr]


def _bias(op: Op) -> torch.Tensor:
    m = op.module
    if m.bias is None:  # type: ignore[union-attr]
        return torch.zeros(_weight(op).shape[0], dtype=torch.float64)
    return m.bias.detach().double()  # type: ignore[union-attr]


def _const_kernel(op: Op) -> torch.Tensor | None:
    return op.module.const_kernel.detach().double() if isinstance(op.module, FoldedConv2d) else None


def _padded(op: Op) -> bool:
    return any(int(p) != 0 for p in op.module.padding)  # type: ignore[union-attr]


def _reads(op: Op, channels: int) -> torch.Tensor:
    """``[outputs, input channels]``: whether the weights of an output on an input channel are non-zero."""
    w = _weight(op)
    if op.kind == "linear":
        return w.view(w.shape[0], channels, -1).abs().sum(2) != 0
    return w.abs().sum((2, 3)) != 0


def _constants(g: Graph) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per tensor: mask of channels constant everywhere, and their values (float64)."""
    is_c = [torch.zeros(t.channels, dtype=torch.bool) for t in g.tensors]
    val = [torch.zeros(t.channels, dtype=torch.float64) for t in g.tensors]
    for op in g.ops:
        i, o = op.inputs[0], op.output
        if op.kind in ("pool", "flatten"):
            is_c[o], val[o] = is_c[i].clone(), val[i].clone()
            if not op.exact_constants:  # padding mixes zeros into a constant channel: only zero stays constant
                is_c[o] &= val[i] == 0
        elif op.kind == "act":
            assert op.fn is not None
            is_c[o] = is_c[i].clone()
            with torch.no_grad():
                val[o] = op.fn(val[i].view(1, -1, 1, 1)).view(-1).double()
        elif op.kind == "add":
            a, b = op.inputs
            is_c[o] = is_c[a] & is_c[b]
            val[o] = val[a] + val[b]
        elif op.kind == "mul":
            a, b = op.inputs
            zero_a, zero_b = is_c[a] & (val[a] == 0), is_c[b] & (val[b] == 0)
            is_c[o] = (is_c[a] & is_c[b]) | zero_a | zero_b
            val[o] = val[a] * val[b]
        elif op.kind == "cat":
            is_c[o] = torch.cat([is_c[t] for t in op.inputs])
            val[o] = torch.cat([val[t] for t in op.inputs])
        else:
            w, b = _weight(op), _bias(op)
            v = torch.where(is_c[i], val[i], torch.zeros_like(val[i]))
            ck = _const_kernel(op)
            ck_live = ck.flatten(1).abs().sum(1) != 0 if ck is not None else torch.zeros_like(b, dtype=torch.bool)
            if op.kind == "linear":
                wr = w.view(w.shape[0], g.tensors[i].channels, -1)
                nz = wr.abs().sum(2) != 0
                is_c[o] = (~nz | is_c[i][None]).all(1)
                val[o] = b + (wr.sum(2) * v[None]).sum(1)
            else:
                scalar_ok = is_c[i] & ((v == 0) | (not _padded(op)))
                if is_depthwise(op.module):
                    nz = w.abs().sum((1, 2, 3)) != 0
                    is_c[o] = (~nz | scalar_ok) & ~ck_live
                    val[o] = b + w.sum((1, 2, 3)) * v
                else:
                    nz = w.abs().sum((2, 3)) != 0
                    is_c[o] = (~nz | scalar_ok[None]).all(1) & ~ck_live
                    val[o] = b + (w.sum((2, 3)) * v[None]).sum(1)
        val[o] = torch.where(is_c[o], val[o], torch.zeros_like(val[o]))
    return is_c, val


def _decide(g: Graph, is_c: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Removed-channel mask per tensor (identical for coupled channels) and the channel group ids."""
    gid = g.channel_groups()
    n_groups = int(max((int(t.max()) for t in gid if t.numel()), default=-1)) + 1
    pinned = torch.zeros(n_groups, dtype=torch.bool)
    pinned[gid[g.input]] = True
    pinned[gid[g.output]] = True
    for t in g.fixed:
        pinned[gid[t]] = True
    readers = {
        t: [op for op in g.consumers(t) if op.kind in ("conv", "linear") and not is_depthwise(op.module)]
        for t in range(len(g.tensors))
    }
    reads = {id(op): _reads(op, g.tensors[op.inputs[0]].channels) for ops in readers.values() for op in ops}
    forced = torch.zeros(n_groups, dtype=torch.bool)
    while True:
        removed = torch.zeros(n_groups, dtype=torch.bool)
        changed = True
        while changed:
            allow = ~forced & ~pinned
            for t, ops in readers.items():
                for op in ops:
                    kept_out = ~removed[gid[op.output]]
                    unread = ~reads[id(op)][kept_out].any(0)
                    allow[gid[t][~(is_c[t] | unread)]] = False
            changed = not torch.equal(allow, removed)
            removed = allow
        empty = [t for t in range(len(g.tensors)) if g.tensors[t].channels and bool(removed[gid[t]].all())]
        if not empty:
            break
        for t in empty:  # keep one channel so no layer ends with zero width (exact: kept channels compute as before)
            forced[gid[t][0]] = True
    return [removed[gid[t]] for t in range(len(g.tensors))], gid


@torch.no_grad()
def _rebuild(op: Op, rin: torch.Tensor, rout: torch.Tensor, v_in: torch.Tensor, channels: int) -> nn.Module:
    w, b = _weight(op), _bias(op).clone()
    kin, kout = ~rin, ~rout
    m = op.module
    if op.kind == "linear":
        wr = w.view(w.shape[0], channels, -1)
        b += (wr[:, rin].sum(2) * v_in[rin][None]).sum(1)
        new_w = wr[kout][:, kin].reshape(int(kout.sum()), -1)
        lin = nn.Linear(new_w.shape[1], new_w.shape[0])
        lin.weight.copy_(new_w.float())
        lin.bias.copy_(b[kout].float())
        return lin
    ck = _const_kernel(op)
    if is_depthwise(m):
        new_w = w[kout]
        groups = int(kout.sum())
    else:
        contrib = (w[:, rin] * v_in[rin].view(1, -1, 1, 1)).sum(1, keepdim=True)
        if _padded(op):
            ck = contrib if ck is None else ck + contrib
        else:
            b += contrib.sum((1, 2, 3))
        new_w = w[kout][:, kin]
        groups = 1
    ck = ck[kout] if ck is not None else None
    folded = ck is not None and bool(ck.abs().sum() != 0)
    cls = FoldedConv2d if folded else nn.Conv2d
    conv = cls(
        new_w.shape[1] * groups,
        new_w.shape[0],
        m.kernel_size,  # type: ignore[union-attr]
        stride=m.stride,  # type: ignore[union-attr]
        padding=m.padding,  # type: ignore[union-attr]
        dilation=m.dilation,  # type: ignore[union-attr]
        groups=groups,
        bias=True,
    )
    conv.weight.copy_(new_w.float())
    conv.bias.copy_(b[kout].float())  # type: ignore[union-attr]
    if folded:
        conv.const_kernel.copy_(ck.float())  # type: ignore[union-attr]
    return conv


@torch.no_grad()
def surgery(model: nn.Module, in_shape: tuple[int, ...] | None = None) -> SurgeryResult:
    """Remove the channels of a sparse model that do not change its output; exact in eval mode.

    Parameters
    ----------
    model : nn.Module
        A zoo model (VGG, ResNet-18, MobileNetV2; ``norm="batch"`` or ``"none"``), typically sparse after
        magnitude pruning. Not modified.
    in_shape : tuple of int, optional
        One input sample's shape; defaults to ``model.spec.in_shape``.

    Returns
    -------
    SurgeryResult
        The smaller dense model and what was removed.

    Raises
    ------
    SurgeryError
        For GroupNorm models or modules the channel graph does not support.
    """
    t0 = time.perf_counter()
    shape = tuple(in_shape or model.spec.in_shape)  # type: ignore[union-attr]
    fused = fuse_batchnorm(model)
    g = trace(fused, shape)
    is_c, val = _constants(g)
    removed, gid = _decide(g, is_c)
    result = SurgeryResult(model=fused)
    for op in g.ops:
        if op.kind not in ("conv", "linear"):
            continue
        i = op.inputs[0]
        v_in = torch.where(is_c[i] & removed[i], val[i], torch.zeros_like(val[i]))
        new = _rebuild(op, removed[i], removed[op.output], v_in, g.tensors[i].channels)
        result.channels_before[op.path] = g.tensors[op.output].channels
        result.channels_after[op.path] = int((~removed[op.output]).sum())
        set_module(fused, op.path, new)
    seen = torch.zeros(max((int(t.max()) + 1 for t in gid if t.numel()), default=0), dtype=torch.bool)
    for t in range(len(g.tensors)):
        new = ~seen[gid[t]]
        seen[gid[t]] = True
        result.removed += int((removed[t] & new).sum())
        result.folded_constants += int((removed[t] & new & is_c[t] & (val[t] != 0)).sum())
    fused.eval()
    _verify(model, fused, shape)
    result.seconds = time.perf_counter() - t0
    return result


def _verify(before: nn.Module, after: nn.Module, shape: tuple[int, ...]) -> None:
    """Never silently wrong: compare both models (eval mode) on random inputs; raise if they disagree."""
    was_training = before.training
    before.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=gen)
    try:
        ref, out = before(x), after(x)
    except RuntimeError as exc:
        raise SurgeryError(f"the surgered model fails on the input the model accepts ({exc}); refusing it") from exc
    finally:
        before.train(was_training)
    diff = float((ref.double() - out.double()).abs().max())
    tol = 1e-3 * (1.0 + float(ref.abs().max()))
    if not diff <= tol:
        raise SurgeryError(
            f"surgery changed the model's output by {diff:.3g} (tolerance {tol:.3g}); refusing the result"
        )
