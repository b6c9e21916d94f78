"""Global magnitude pruning: which weights are prunable, masks at a target sparsity, keeping masks applied."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "apply_masks",
    "compression_of",
    "enforce_masks",
    "global_magnitude_masks",
    "is_prunable",
    "prunable_tensors",
    "sparsity_of",
]


def is_prunable(name: str, tensor: torch.Tensor, include_linear: bool = False) -> bool:
    """Convolution weights (4-D ``*.weight``), and linear weights (2-D) when ``include_linear``."""
    if not name.endswith("weight") or not tensor.is_floating_point():
        return False
    return tensor.dim() == 4 or (include_linear and tensor.dim() == 2)


def prunable_tensors(
    source: nn.Module | Mapping[str, torch.Tensor], include_linear: bool = False
) -> dict[str, torch.Tensor]:
    """The prunable weights of a model (its parameters, shared) or of a state dict, by name."""
    items = source.named_parameters() if isinstance(source, nn.Module) else source.items()
    return {k: v for k, v in items if is_prunable(k, v, include_linear)}


@torch.no_grad()
def global_magnitude_masks(
    tensors: Mapping[str, torch.Tensor],
    sparsity: float,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the ``(1 - sparsity)`` fraction of weights with the largest magnitude, over all tensors together.

    Parameters
    ----------
    tensors : mapping of str to Tensor
        The prunable weights.
    sparsity : float
        Target fraction of zeros over all of them, in ``[0, 1)``.
    masks : mapping, optional
        Current masks; weights already masked out stay out (the new masks are nested in the old ones).

    Returns
    -------
    dict of str to Tensor
        Boolean masks (``True`` = keep), one per tensor.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if not tensors:
        return {}
    names = list(tensors)
    scores = []
    for k in names:
        s = tensors[k].detach().abs().float().flatten()
        if masks is not None and k in masks:
            s = torch.where(masks[k].flatten(), s, torch.full_like(s, -1.0))
        scores.append(s)
    flat = torch.cat(scores)
    keep = max(1, round((1.0 - sparsity) * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    if masks is not None:  # never revive a weight that was pruned earlier
        chosen &= torch.cat(
            [
                masks[k].flatten() if k in masks else torch.ones_like(s, dtype=torch.bool)
                for k, s in zip(names, scores, strict=True)
            ]
        )
    out, start = {}, 0
    for k in names:
        n = tensors[k].numel()
        out[k] = chosen[start : start + n].view_as(tensors[k])
        start += n
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked-out weights of ``model`` in place."""
    params = dict(model.named_parameters())
    for k, m in masks.items():
        params[k].mul_(m.to(params[k].dtype))


def enforce_masks(optimizer: torch.optim.Optimizer, model: nn.Module, masks: Mapping[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    """Re-apply ``masks`` after every step of ``optimizer``; returns the hook handle (call ``.remove()``)."""

    def hook(*_: object) -> None:
        apply_masks(model, masks)

    return optimizer.register_step_post_hook(hook)


def sparsity_of(tensors: Mapping[str, torch.Tensor]) -> float:
    """Fraction of exactly-zero entries over ``tensors``."""
    total = sum(t.numel() for t in tensors.values())
    zeros = sum(int((t == 0).sum()) for t in tensors.values())
    return zeros / total if total else 0.0


def compression_of(tensors: Mapping[str, torch.Tensor]) -> float:
    """All prunable weights over non-zero ones (``2`` = half of them pruned)."""
    total = sum(t.numel() for t in tensors.values())
    nonzero = sum(int((t != 0).sum()) for t in tensors.values())
    return total / max(nonzero, 1)
