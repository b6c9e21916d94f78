"""BatchNorm folding and the convolution that carries folded constant input channels.

After folding, every convolution has a bias and every ``BatchNorm2d`` that followed a convolution is an
``nn.Identity``. A convolution whose input lost constant channels under zero padding becomes a
:class:`FoldedConv2d`: it adds ``conv2d(ones, const_kernel)`` to its output, which is exactly what the removed
constant channels contributed, borders included.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn

from edgeflower.models.fx import TraceError, trace_module
from edgeflower.pruning.errors import SurgeryError

__all__ = ["FoldedConv2d", "fold_conv_bn", "fuse_batchnorm", "set_module"]


class FoldedConv2d(nn.Conv2d):
    """A ``Conv2d`` plus the exact contribution of removed constant input channels.

    The buffer ``const_kernel`` (``out_channels x 1 x kh x kw``) is ``sum_j v_j * W[:, j]`` over the removed input
    channels ``j`` with constant value ``v_j``. With zero padding those channels are not constant after padding, so
    their contribution is the convolution of an all-ones image with ``const_kernel`` (same stride, padding and
    dilation): a fixed map per input size, computed once and cached.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.register_buffer("const_kernel", torch.zeros(self.out_channels, 1, *self.kernel_size))
        self._map_key: tuple[object, ...] | None = None
        self._map: torch.Tensor | None = None

    def constant_map(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The output contribution of the folded channels for an input of ``height x width``."""
        key = (height, width, like.dtype, like.device, self.const_kernel._version, self.const_kernel.data_ptr())
        if self._map is None or self._map_key != key:
            ones = torch.ones(1, 1, height, width, dtype=like.dtype, device=like.device)
            kernel = self.const_kernel.to(like.dtype)
            with torch.no_grad():
                self._map = F.conv2d(ones, kernel, None, self.stride, self.padding, self.dilation)
            self._map_key = key
        return self._map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution plus the folded constant map."""
        return super().forward(x) + self.constant_map(x.shape[-2], x.shape[-1], x)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` of ``root`` by ``module``."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        parent[int(name)] = module
    else:
        setattr(parent, name, module)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (computed in float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    fused = copy.deepcopy(conv)
    if fused.bias is None:
        fused.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype))
    fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    fused.bias.copy_(((b - bn.running_mean.double()) * scale + shift).to(conv.weight.dtype))
    if isinstance(fused, FoldedConv2d):
        fused.const_kernel.mul_(scale.view(-1, 1, 1, 1).to(fused.const_kernel.dtype))
    return fused


def _with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    if conv.bias is not None:
        return conv
    out = copy.deepcopy(conv)
    out.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
    return out


def _pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Module paths ``(conv, bn)`` where, in the traced data flow, the BN reads only the conv's output and the conv's
    output goes only to the BN (each called once)."""
    try:
        gm = trace_module(model)
    except TraceError as exc:
        raise SurgeryError(f"cannot prove the data flow: {exc}") from exc
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(str(node.target)), nn.BatchNorm2d):
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        if not isinstance(model.get_submodule(str(src.target)), nn.Conv2d):
            continue
        if calls[str(src.target)] == 1 and calls[str(node.target)] == 1:
            pairs.append((str(src.target), str(node.target)))
    return pairs


@torch.no_grad()
def fuse_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that follows a convolution into it; give every convolution a bias.

    Parameters
    ----------
    model : nn.Module
        Any model ``torch.fx`` can trace; a BatchNorm is folded when, in the traced data flow, it reads exactly
        the output of a convolution that nothing else reads.
    inplace : bool
        Modify ``model`` instead of a deep copy.

    Returns
    -------
    nn.Module
        The fused model in eval mode; equal to ``model`` in eval mode up to float rounding.
    """
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    for conv_path, bn_path in _pairs(out):
        conv, bn = out.get_submodule(conv_path), out.get_submodule(bn_path)
        set_module(out, conv_path, fold_conv_bn(conv, bn))  # type: ignore[arg-type]
        set_module(out, bn_path, nn.Identity())
    for path, module in list(out.named_modules()):
        if isinstance(module, nn.Conv2d) and module.bias is None:
            set_module(out, path, _with_bias(module))
    return out
