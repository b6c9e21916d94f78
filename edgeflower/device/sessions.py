"""How a trainer opens its round's session on an edge server.

A trainer decides *what* the session starts from (its split point, the round-start tail, the optimizer settings);
the caller decides *where* and *as whom* (the edge server's client, the round's token, the model, and the tail's DP
parameters for ``dp = full``). :class:`EdgeSessions` holds the caller's part, so a trainer can also open the same
kind of session on another edge server (a restarted round reopens on the destination, as private as the first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.client import EdgeClient, SessionHandle
from edgeflower.transport.messages import DPParams, OptimizerSettings

__all__ = ["EdgeSessions", "SessionOpener", "tensor_bytes"]

SessionOpener = Callable[[int, dict[str, torch.Tensor], OptimizerSettings], Any]
"""``open(split_point, tail_state, optimizer) -> SessionHandle``: what a trainer calls to open its round's session
(an :class:`EdgeSessions`, or any callable, e.g. a test's stand-in)."""


@dataclass(frozen=True)
class EdgeSessions:
    """Opens a round's session on one edge server (a :data:`SessionOpener`).

    Parameters
    ----------
    client : EdgeClient
        The edge server's client (the caller closes it).
    token : str
        The round's ``device`` token for that edge server.
    spec : ModelSpec
        The whole model's spec.
    dp : DPParams, optional
        The tail's DP-SGD parameters (``dp = full``: the edge server trains the tail privately too).
    """

    client: EdgeClient
    token: str
    spec: ModelSpec
    dp: DPParams | None = None

    def __call__(
        self, split_point: int, tail_state: Mapping[str, torch.Tensor], optimizer: OptimizerSettings
    ) -> SessionHandle:
        """Open the session: blocks ``[split_point:]`` on the edge server, starting from ``tail_state``."""
        return self.client.open_session(self.token, self.spec, split_point, tail_state, optimizer, dp=self.dp)

    def on(self, client: EdgeClient, token: str) -> EdgeSessions:
        """The same kind of session on another edge server, under its token (a restarted round)."""
        return replace(self, client=client, token=token)


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the tensors' data (``None`` counts nothing): what a transfer of them costs on the link."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
