"""The offload channel's messages and their mapping onto codec frames.

=================  ===============  ====================================================  ====================
message            frame kind       meta                                                  tensors
=================  ===============  ====================================================  ====================
OpenRequest        ``open``         token, model (ModelSpec dict), split_point,           the tail's state dict
                                    optimizer {lr, momentum, weight_decay},
                                    dp (optional DPParams dict: DP-SGD on the tail),
                                    wire_dtype (optional, default float32)
OpenReply          ``opened``       session_id, edge_id, input_shape, expects_grad        --
StepRequest        ``step``         batch, micro, num_micro, batch_size, wire (optional)  activations, labels
                                                                                          (+ activations-scale)
StepResult         ``step_result``  batch, micro, loss, stepped, server_s, compute_s,     grad (if k > 0)
                                    wire (optional)                                       (+ grad-scale)
(end of stream)    ``end``          next (optional: ``"migrate"``: a move follows)        --
CloseRequest       ``close``        session_id, token                                     --
CloseReply         ``closed``       metrics (SessionMetrics dict)                         the tail's state dict
(health request)   ``health``       --                                                    --
HealthInfo         ``health_info``  status, edge_id, sessions, version                    --
=================  ===============  ====================================================  ====================

The training stream (``step`` up, ``step_result`` down) authenticates through gRPC metadata (see
:mod:`edgeflower.transport.service`). The client ends it with an ``end`` frame before half-closing; a stream that
stops without one (cancellation, disconnect) is treated as a vanished device and its session is dropped.

Every ``from_frame`` checks the frame kind and the type and range of every field and raises
:class:`~edgeflower.transport.errors.InvalidMessageError` on any mismatch.

This module is the catalogue and the one import point; the messages live with their kin:

* :mod:`~edgeflower.transport.fields` -- reading a frame's fields with type and range checks;
* :mod:`~edgeflower.transport.settings` -- :class:`OptimizerSettings` and :class:`DPParams` (how the tail trains);
* :mod:`~edgeflower.transport.session_messages` -- open and close, :class:`SessionMetrics`;
* :mod:`~edgeflower.transport.step_messages` -- the training stream's steps and its ``end`` frame;
* :mod:`~edgeflower.transport.wire` -- the wire formats of activations and gradients (``wire-dtype``);
* :mod:`~edgeflower.transport.health` -- :class:`HealthInfo`;
* :mod:`~edgeflower.transport.migration` -- the messages of session migration (not re-exported here).
"""

from __future__ import annotations

from edgeflower.transport.fields import expect_kind
from edgeflower.transport.health import HealthInfo
from edgeflower.transport.session_messages import CloseReply, CloseRequest, OpenReply, OpenRequest, SessionMetrics
from edgeflower.transport.settings import DPParams, OptimizerSettings
from edgeflower.transport.step_messages import END_KIND, StepRequest, StepResult, end_frame, ends_before_migration

__all__ = [
    "END_KIND",
    "CloseReply",
    "CloseRequest",
    "DPParams",
    "HealthInfo",
    "OpenReply",
    "OpenRequest",
    "OptimizerSettings",
    "SessionMetrics",
    "StepRequest",
    "StepResult",
    "end_frame",
    "ends_before_migration",
    "expect_kind",
]
