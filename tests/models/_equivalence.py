"""Split/merge and split-training equivalence checks shared by the tests and the models benchmark."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from edgeflower.models import SplittableModel, merge_state_dicts

Batch = tuple[torch.Tensor, torch.Tensor]


def dropout_off(model: nn.Module) -> nn.Module:
    """Put every random layer (dropout, stochastic depth) in eval mode; everything else stays as it is."""
    for m in model.modules():
        name = type(m).__name__
        if "Dropout" in name or name == "StochasticDepth":
            m.eval()
    return model


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()), default=0.0)


def split_merge_diff(model: SplittableModel, x: torch.Tensor, k: int) -> float:
    """Cut at ``k``, merge the parts' state dicts into a copy and compare state and eval outputs with the model."""
    model.eval()
    head, tail = model.split(k)
    clone = copy.deepcopy(model)
    clone.merge(head, tail)
    with torch.no_grad():
        ref = model(x)
        diff = (tail(head(x)) - ref).abs().max().item()
        diff = max(diff, (clone(x) - ref).abs().max().item())
    return max(diff, max_diff(merge_state_dicts(head, tail), model.state_dict()))


def split_training_diff(model: SplittableModel, batches: Sequence[Batch], k: int, lr: float = 0.05) -> float:
    """Train a copy whole and a copy split at ``k`` (head and tail with their own SGD); the largest state gap."""
    whole, split = copy.deepcopy(model), copy.deepcopy(model)
    for m in (whole, split):
        dropout_off(m.train())
    opt = torch.optim.SGD(whole.parameters(), lr=lr, momentum=0.9)
    head, tail = split.split(k, share=True)
    opts = [torch.optim.SGD(part.parameters(), lr=lr, momentum=0.9) for part in (head, tail) if any(part.parameters())]
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(whole(x), y).backward()
        opt.step()
        for o in opts:
            o.zero_grad()
        act = head(x)
        sent = act.detach().requires_grad_(act.requires_grad)
        F.cross_entropy(tail(sent), y).backward()
        if act.requires_grad:
            act.backward(sent.grad)
        for o in opts:
            o.step()
    return max_diff(whole.state_dict(), split.state_dict())
