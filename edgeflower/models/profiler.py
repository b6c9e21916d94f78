"""Per-block profile of a splittable model: the input of every planner.

For each block: forward FLOPs per sample (counted by :class:`torch.utils.flop_counter.FlopCounterMode`, i.e. the
matrix-multiply and convolution FLOPs), output activation bytes per sample, parameter bytes, and the measured
forward and backward time on this machine for a given batch size.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgeflower.models.splittable import SplittableModel

__all__ = ["BlockProfile", "ModelProfile", "count_flops", "profile_model"]


@dataclass(frozen=True)
class BlockProfile:
    """Profile of one block.

    Attributes
    ----------
    index, name : int, str
        Position and name of the block.
    flops : int
        Forward FLOPs for one sample.
    out_bytes : int
        Bytes of the block's output activation for one sample (float32 = 4 bytes per element).
    out_shape : tuple of int
        Shape of one sample's output.
    param_bytes : int
        Bytes of the block's parameters and buffers.
    fwd_s, bwd_s : float
        Measured forward and backward seconds for one batch of ``batch_size`` (0 when not measured).
    fwd_fixed_s, bwd_fixed_s : float
        Their per-call part that does not shrink with the batch (Python and kernel launch overhead), from a second
        measurement at 2 samples; what makes very small micro-batches expensive.
    """

    index: int
    name: str
    flops: int
    out_bytes: int
    out_shape: tuple[int, ...]
    param_bytes: int
    fwd_s: float = 0.0
    bwd_s: float = 0.0
    fwd_fixed_s: float = 0.0
    bwd_fixed_s: float = 0.0

    def fwd_at(self, n: float, batch_size: int) -> float:
        """Forward seconds for ``n`` samples: the fixed per-call part plus a per-sample part."""
        return self.fwd_fixed_s + (self.fwd_s - self.fwd_fixed_s) * n / batch_size

    def bwd_at(self, n: float, batch_size: int) -> float:
        """Backward seconds for ``n`` samples (see :meth:`fwd_at`)."""
        return self.bwd_fixed_s + (self.bwd_s - self.bwd_fixed_s) * n / batch_size


@dataclass(frozen=True)
class ModelProfile:
    """Profile of a whole model: one :class:`BlockProfile` per block plus the input size."""

    model: str
    in_shape: tuple[int, ...]
    in_bytes: int
    batch_size: int
    blocks: tuple[BlockProfile, ...]

    @property
    def total_flops(self) -> int:
        """Sum of block FLOPs per sample."""
        return sum(b.flops for b in self.blocks)

    def head_flop_share(self, k: int) -> float:
        """Fraction of the model's FLOPs in blocks ``[:k]``."""
        total = self.total_flops
        return sum(b.flops for b in self.blocks[:k]) / total if total else 0.0

    def boundary_bytes(self, k: int) -> int:
        """Bytes per sample that cross split point ``k`` (the input itself for ``k = 0``)."""
        return self.in_bytes if k == 0 else self.blocks[k - 1].out_bytes

    def to_json(self) -> str:
        """Serialise to JSON."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelProfile:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        blocks = tuple(BlockProfile(**{**b, "out_shape": tuple(b["out_shape"])}) for b in data.pop("blocks"))
        return cls(**{**data, "in_shape": tuple(data["in_shape"]), "blocks": blocks})


def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs of ``module`` on input ``x`` (all samples of ``x``)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())


def _time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _measure(block: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Fastest forward and backward seconds of ``block`` on ``x``."""
    xin = x.detach().requires_grad_(True)

    def forward() -> torch.Tensor:
        return block(xin)

    fwd = _time(forward, repeats)
    grad = torch.ones_like(forward())

    def backward() -> None:
        torch.autograd.backward(block(xin), grad)

    return fwd, max(0.0, _time(backward, repeats) - fwd)


def profile_model(
    model: SplittableModel,
    batch_size: int = 32,
    measure: bool = True,
    repeats: int = 3,
    in_shape: Sequence[int] | None = None,
) -> ModelProfile:
    """Profile every block of ``model``.

    Parameters
    ----------
    model : SplittableModel
        The model (left unchanged: timing runs on a copy of the parameters' values is not needed because
        no optimizer step is taken, and BatchNorm running statistics are restored).
    batch_size : int
        Batch size for the timing measurements.
    measure : bool
        Measure forward/backward times (otherwise they are 0).
    repeats : int
        Timing repetitions; the fastest is kept.
    in_shape : sequence of int, optional
        One sample's shape; defaults to ``model.spec.in_shape``.

    Returns
    -------
    ModelProfile
    """
    shape = tuple(in_shape or model.spec.in_shape)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.eval()
    blocks: list[BlockProfile] = []
    x1 = torch.randn(1, *shape)
    xb = torch.randn(batch_size, *shape) if measure else x1
    try:
        for i, block in enumerate(model.blocks):
            flops = count_flops(block, x1)
            with torch.no_grad():
                y1 = block(x1)
            fwd = bwd = 0.0
            fwd_fixed = bwd_fixed = 0.0
            if measure:
                block.train()
                fwd, bwd = _measure(block, xb, repeats)
                small = min(2, batch_size)
                if small < batch_size:  # fit time = fixed + per-sample * n from two batch sizes
                    fwd2, bwd2 = _measure(block, xb[:small], repeats)
                    fwd_fixed = min(fwd2, max(0.0, (fwd2 * batch_size - fwd * small) / (batch_size - small)))
                    bwd_fixed = min(bwd2, max(0.0, (bwd2 * batch_size - bwd * small) / (batch_size - small)))
                block.eval()
                model.zero_grad(set_to_none=True)
                with torch.no_grad():
                    xb = block(xb)
            params = sum(p.numel() * p.element_size() for p in block.parameters())
            params += sum(b.numel() * b.element_size() for b in block.buffers())
            blocks.append(
                BlockProfile(
                    index=i,
                    name=model.block_names[i],
                    flops=flops,
                    out_bytes=y1[0].numel() * y1.element_size(),
                    out_shape=tuple(y1.shape[1:]),
                    param_bytes=params,
                    fwd_s=fwd,
                    bwd_s=bwd,
                    fwd_fixed_s=fwd_fixed,
                    bwd_fixed_s=bwd_fixed,
                )
            )
            x1 = y1
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    return ModelProfile(
        model=model.spec.name,
        in_shape=shape,
        in_bytes=math.prod(shape) * 4,
        batch_size=batch_size,
        blocks=tuple(blocks),
    )
