"""Size limits of offload-channel messages, sized from the model a run trains.

A split round sends the tail's weights when a session opens (and gets them back when it closes), one batch's
activations and their gradient per step, and a migration carries the tail with its optimizer's momentum. The limit
must admit the largest of these and refuse anything far above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from edgeflower.models.splittable import SplittableModel

__all__ = ["MESSAGE_HEADROOM", "MIN_MESSAGE_BYTES", "message_limit_bytes"]

MIN_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_BYTES
"""The smallest size limit of an offload-channel message sized from the model (the transport's default, 64 MiB)."""
MESSAGE_HEADROOM = 1.25
"""Headroom on the largest message a plan can send (frame headers, optimizer state in a migration's frame)."""


def message_limit_bytes(model: SplittableModel, batch_size: int, override_mb: float = 0.0) -> int:
    """The size limit of offload-channel messages for ``model``: what its plans can send, plus headroom.

    The largest messages are the tail's weights (sent when a session opens, returned when it closes; a migration
    carries them with the optimizer's momentum, twice the weights) and one batch's activations (or their
    gradient) at the widest split point. The limit is ``MESSAGE_HEADROOM`` times the larger of the two plus 1 MiB,
    and never below :data:`MIN_MESSAGE_BYTES`. ``override_mb`` > 0 (run-config ``max-message-mb``, MiB) replaces it.
    """
    if override_mb > 0:
        return int(override_mb * 2**20)
    import torch

    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    widest = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, *model.spec.in_shape)
            widest = x.numel()
            for block in model.blocks[:-1]:  # the output of the last block never crosses the link
                x = block(x)
                widest = max(widest, x.numel())
    finally:
        model.train(was_training)
    activations = batch_size * (widest * 4 + 8)  # float32 activations and int64 labels
    needed = max(2 * state, activations)
    return max(MIN_MESSAGE_BYTES, int(needed * MESSAGE_HEADROOM) + 2**20)
