"""Split/merge and split-training equivalence checks shared by the tests and the models benchmark."""

from __future__ import annotations

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


def unsplit_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A splittable model's state dict under the original module's keys (``blocks.<i>.`` dropped)."""
    return {k.split(".", 2)[2]: v for k, v in state.items()}


def split_merge_diff(model: SplittableModel, x: torch.Tensor, k: int) -> float:
    """Cut at ``k`` (copies), compare ``tail(head(x))`` and the merged state with the model, merge back strictly."""
    model.eval()
    head, tail = model.split(k)
    merged = merge_state_dicts(head, tail)
    with torch.no_grad():
        diff = (tail(head(x)) - model(x)).abs().max().item()
    diff = max(diff, max_diff(merged, model.state_dict()))
    model.merge(head, tail)  # strict: any missing or unexpected key raises
    return diff


def split_training_diff(whole: nn.Module, split: SplittableModel, batches: Sequence[Batch], k: int) -> float:
    """Train ``whole`` (an unsplit copy of the module) and ``split`` cut at ``k`` (head and tail with their own
    SGD, only the activation and its gradient crossing); the largest gap between the trained states."""
    lr = 0.05
    for m in (whole, split):
        dropout_off(m.train())
    opt = torch.optim.SGD(whole.parameters(), lr=lr, momentum=0.9)
    head, tail = split.split(k, share=True)
    parts = [p for p in (head, tail) if list(p.parameters())]
    opts = [torch.optim.SGD(p.parameters(), lr=lr, momentum=0.9) for p in parts]
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
    return max_diff(whole.state_dict(), unsplit_keys(split.state_dict()))
