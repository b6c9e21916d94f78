"""Measured figures of a model: parameter count, bytes on disk, CPU latency."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from edgeflower.pruning.fusion import FoldedConv2d

__all__ = ["count_params", "cpu_latency_ms", "state_bytes"]


def count_params(model: nn.Module) -> int:
    """Parameters plus the folded constant kernels (which are stored like weights)."""
    n = sum(p.numel() for p in model.parameters())
    return n + sum(m.const_kernel.numel() for m in model.modules() if isinstance(m, FoldedConv2d))


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (what a weight file takes on disk)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


@torch.no_grad()
def cpu_latency_ms(
    model: nn.Module, in_shape: Sequence[int], batch_size: int = 1, repeats: int = 20, warmup: int = 3
) -> float:
    """Median forward time in milliseconds of ``model`` (eval mode) on a random batch."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *in_shape)
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)
