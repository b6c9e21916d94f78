"""Open an edge session whose tail the edge server trains with DP-SGD (``dp = full``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.client import EdgeClient, SessionHandle
from edgeflower.transport.messages import DPParams, OpenReply, OpenRequest, OptimizerSettings
from edgeflower.transport.service import METHOD_OPEN

__all__ = ["open_private_session"]


def open_private_session(
    client: EdgeClient,
    token: str,
    spec: ModelSpec,
    split_point: int,
    tail_state: Mapping[str, torch.Tensor],
    optimizer: OptimizerSettings,
    dp: DPParams,
) -> SessionHandle:
    """Like :meth:`EdgeClient.open_session`, with :class:`DPParams` in the open request."""
    request = OpenRequest(token, spec, split_point, optimizer, dict(tail_state), dp=dp)
    frame = client.call_retrying(METHOD_OPEN, request.to_bytes(client.limits))
    return SessionHandle(client, OpenReply.from_frame(frame), token, split_point)
