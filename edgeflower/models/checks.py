"""Checks that a model splits exactly: run them on your own model before training it split.

Split training is only worth having if it computes what local training computes. These two checks prove it for a
given model, input shape and cut, with the model's own layers:

* :func:`split_merge_gap` — cut at ``k``: ``tail(head(x))`` against ``model(x)``, and the merged head and tail
  state against the model's state;
* :func:`split_training_gap` — train an unsplit copy and the split model (head and tail with their own SGD, only
  the activation and its gradient crossing the cut) on the same batches; the largest gap between the trained
  parameters.

Both return the largest absolute difference; float32 round-off gives about ``1e-6``. The test suite and
``benchmarks/models.py`` use them on the zoo and on torchvision's models.

Examples
--------
>>> import copy, torch
>>> from edgeflower.models import splittable
>>> from edgeflower.models.checks import split_merge_gap, split_training_gap
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> model = splittable(copy.deepcopy(net), torch.randn(1, 4))
>>> split_merge_gap(model, torch.randn(5, 4), k=1) < 1e-6
True
>>> batches = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
>>> split_training_gap(net, model, batches, k=1) < 1e-6
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from edgeflower.models.splittable import SplittableModel, merge_state_dicts

Batch = tuple[torch.Tensor, torch.Tensor]

_LR = 0.05
_MOMENTUM = 0.9


def dropout_off(model: nn.Module) -> nn.Module:
    """Put every random layer (dropout, stochastic depth) in eval mode; everything else stays as it is.

    Parameters
    ----------
    model : nn.Module
        Changed in place.

    Returns
    -------
    nn.Module
        ``model``, for chaining.
    """
    for m in model.modules():
        name = type(m).__name__
        if "Dropout" in name or name == "StochasticDepth":
            m.eval()
    return model


def state_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys.

    Raises
    ------
    KeyError
        When the keys differ (the names of the first differing keys in the message).
    """
    if a.keys() != b.keys():
        only = sorted(set(a) ^ set(b))[:5]
        raise KeyError(f"the state dicts have different keys, e.g. {only}")
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()), default=0.0)


def unsplit_keys(state: dict[str, torch.Tensor], original: Iterable[str]) -> dict[str, torch.Tensor]:
    """A splittable model's state dict under the original module's keys.

    A traced module's blocks hold its submodules under their own names (``blocks.<i>.<name>``); an
    ``nn.Sequential``'s blocks are its items (``blocks.<i>`` is item ``i``). Whichever reading gives exactly the
    ``original`` keys is used.

    Raises
    ------
    KeyError
        When neither reading gives the original keys.
    """
    wanted = set(original)
    for cut in (2, 1):
        renamed = {k.split(".", cut)[cut]: v for k, v in state.items()}
        if set(renamed) == wanted:
            return renamed
    raise KeyError(f"the split model's keys do not map onto the original's, e.g. {sorted(state)[:3]}")


def split_merge_gap(model: SplittableModel, x: torch.Tensor, k: int) -> float:
    """Cut ``model`` at ``k`` (copies) and compare with the uncut model in eval mode.

    Parameters
    ----------
    model : SplittableModel
        The model; put in eval mode, and merged back from the head and tail strictly (a missing or unexpected key
        raises).
    x : torch.Tensor
        An input batch.
    k : int
        The split point (blocks on the device).

    Returns
    -------
    float
        The larger of the output gap ``|tail(head(x)) - model(x)|`` and the merged-state gap.
    """
    model.eval()
    head, tail = model.split(k)
    merged = merge_state_dicts(head, tail)
    with torch.no_grad():
        diff = float((tail(head(x)) - model(x)).abs().max())
    diff = max(diff, state_gap(merged, model.state_dict()))
    model.merge(head, tail)
    return diff


def split_training_gap(whole: nn.Module, split: SplittableModel, batches: Sequence[Batch], k: int) -> float:
    """Train ``whole`` unsplit and ``split`` cut at ``k`` on the same batches; the largest parameter gap after.

    Parameters
    ----------
    whole : nn.Module
        An unsplit copy of the module ``split`` was made from (trained in place).
    split : SplittableModel
        The splittable model (trained in place: its head and tail share its parameters), each half with its own SGD
        (lr 0.05, momentum 0.9, as ``whole``'s); only the activation and its gradient cross the cut.
    batches : Sequence[tuple[torch.Tensor, torch.Tensor]]
        Inputs and integer class labels.
    k : int
        The split point.

    Returns
    -------
    float
        Largest absolute difference between the trained states (under the original module's keys).
    """
    for m in (whole, split):
        dropout_off(m.train())
    opt = torch.optim.SGD(whole.parameters(), lr=_LR, momentum=_MOMENTUM)
    head, tail = split.split(k, share=True)
    opts = [torch.optim.SGD(p.parameters(), lr=_LR, momentum=_MOMENTUM) for p in (head, tail) if list(p.parameters())]
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
    reference = whole.state_dict()
    return state_gap(reference, unsplit_keys(split.state_dict(), reference))
