"""The training steps every side shares: the SGD optimizer, a local pass, the split loss, evaluation.

The device (classic FL and the head of split training), the edge server (the tail), IMP pruning and failout
training all train with these functions, so a split round and a local one compute the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from edgeflower.data.datasets import ImageData

__all__ = ["TrainResult", "evaluate", "make_optimizer", "micro_batch_loss", "train_local"]


@dataclass
class TrainResult:
    """What one local training pass produced.

    Attributes
    ----------
    num_examples : int
        Samples seen.
    loss : float
        Mean training loss.
    seconds : float
        Wall-clock time of the pass.
    """

    num_examples: int
    loss: float
    seconds: float


def make_optimizer(
    params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.SGD:
    """The SGD optimizer used on both sides of every training mode."""
    return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)


def micro_batch_loss(
    logits: torch.Tensor, labels: torch.Tensor, batch_size: int, num_micro: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tail's loss on one (micro-)batch, as the edge server computes it: ``(loss, to_backpropagate)``.

    The cross-entropy is the mean over the micro-batch; when a batch is cut into ``num_micro > 1`` micro-batches it
    is scaled by ``len(labels) / batch_size``, so the gradients accumulated over the batch equal the full batch's.
    A device replaying a dead edge server's steps uses the same function, so the replay is exact.
    """
    loss = nn.functional.cross_entropy(logits, labels)
    return loss, (loss * (len(labels) / batch_size) if num_micro > 1 else loss)


def train_local(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    slowdown: float = 1.0,
) -> TrainResult:
    """Train ``model`` on ``batches`` with cross-entropy, one optimizer step per batch.

    Parameters
    ----------
    model : nn.Module
        Model to train in place.
    batches : iterable of (x, y)
        Mini-batches.
    optimizer : torch.optim.Optimizer
        Optimizer over ``model``'s parameters.
    slowdown : float
        Device emulation: compute time is stretched by this factor (1.0 = this machine's speed).
    """
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total, n, t0 = 0.0, 0, time.perf_counter()
    for x, y in batches:
        tb = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if slowdown > 1.0:
            time.sleep((time.perf_counter() - tb) * (slowdown - 1.0))
        total += loss.item() * len(y)
        n += len(y)
    return TrainResult(n, total / max(n, 1), time.perf_counter() - t0)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, batch_size: int = 1000) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` of ``model`` on ``data`` (eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for i in range(0, len(data), batch_size):
        x, y = data.x[i : i + batch_size], data.y[i : i + batch_size]
        out = model(x)
        loss += float(loss_fn(out, y))
        correct += int((out.argmax(1) == y).sum())
    model.train(was_training)
    n = max(len(data), 1)
    return loss / n, correct / n
