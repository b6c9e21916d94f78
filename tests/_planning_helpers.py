"""A deterministic profile for planning tests: block times proportional to FLOPs (no timing noise)."""

from __future__ import annotations

from dataclasses import replace

from edgeflower.models import build_model, profile_model
from edgeflower.models.profiler import ModelProfile

FLOPS_PER_S = 50e9


def flop_profile(name: str = "vgg5", batch_size: int = 100) -> ModelProfile:
    """``profile_model`` without measuring; forward time = FLOPs / 50 GFLOP/s, backward twice that (+ 1 ms/block)."""
    prof = profile_model(build_model(name), batch_size=batch_size, measure=False)
    blocks = tuple(
        replace(b, fwd_s=b.flops * batch_size / FLOPS_PER_S + 5e-4, bwd_s=2 * b.flops * batch_size / FLOPS_PER_S + 5e-4)
        for b in prof.blocks
    )
    return replace(prof, blocks=blocks)
