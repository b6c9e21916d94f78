"""The messages that open and close a session: :class:`OpenRequest` / :class:`OpenReply` and
:class:`CloseRequest` / :class:`CloseReply` (with the session's :class:`SessionMetrics`).

See :mod:`edgeflower.transport.messages` for the table of every message and its frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.codec import Frame, Limits, encode_frame
from edgeflower.transport.errors import InvalidMessageError
from edgeflower.transport.fields import expect_kind, float_field, int_field, str_field
from edgeflower.transport.settings import DPParams, OptimizerSettings
from edgeflower.transport.wire import check_wire_dtype

__all__ = ["CloseReply", "CloseRequest", "OpenReply", "OpenRequest", "SessionMetrics"]


@dataclass
class OpenRequest:
    """Open a session: rebuild ``spec``, keep blocks ``[split_point:]`` with ``tail_state``, create the optimizer.

    Attributes
    ----------
    token : str
        Session token from :class:`~edgeflower.transport.auth.TokenIssuer`.
    spec : ModelSpec
        The model.
    split_point : int
        Blocks on the device; the server trains ``[split_point:]`` (``0 <= split_point < num_blocks``).
    optimizer : OptimizerSettings
        Server-side optimizer settings.
    tail_state : dict of str to torch.Tensor
        Initial state dict of the tail (full-model keys ``blocks.<i>....``).
    dp : DPParams, optional
        Train the tail with DP-SGD (per-sample clipping and noise at each batch's step).
    wire_dtype : str
        How activations and gradients travel on the session's stream (:mod:`~edgeflower.transport.wire`; meta
        ``wire_dtype``, absent for the default ``float32``). The tail state always travels as it is.
    """

    token: str
    spec: ModelSpec
    split_point: int
    optimizer: OptimizerSettings
    tail_state: dict[str, torch.Tensor]
    dp: DPParams | None = None
    wire_dtype: str = "float32"

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as an ``open`` frame."""
        meta = {
            "token": self.token,
            "model": self.spec.to_dict(),
            "split_point": self.split_point,
            "optimizer": self.optimizer.to_dict(),
        }
        if self.dp is not None:
            meta["dp"] = self.dp.to_dict()
        if self.wire_dtype != "float32":
            meta["wire_dtype"] = check_wire_dtype(self.wire_dtype)
        return encode_frame("open", meta, self.tail_state, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> OpenRequest:
        """Parse and validate an ``open`` frame."""
        meta = expect_kind(frame, "open").meta
        if not isinstance(meta.get("model"), dict):
            raise InvalidMessageError("field 'model' must be a model spec object")
        try:
            spec = ModelSpec.from_dict(meta["model"])
        except ValueError as exc:
            raise InvalidMessageError(str(exc)) from exc
        return cls(
            token=str_field(meta, "token"),
            spec=spec,
            split_point=int_field(meta, "split_point", 0, 100_000),
            optimizer=OptimizerSettings.from_dict(meta.get("optimizer")),
            tail_state=dict(frame.tensors),
            dp=None if meta.get("dp") is None else DPParams.from_dict(meta["dp"]),
            wire_dtype=check_wire_dtype(str_field(meta, "wire_dtype", optional=True, max_len=32) or "float32"),
        )


@dataclass(frozen=True)
class OpenReply:
    """The edge server's answer to :class:`OpenRequest`.

    Attributes
    ----------
    session_id : str
        The new session's id.
    edge_id : str
        The edge server's id (empty if it has none).
    input_shape : tuple of int
        Shape of one sample of the activations the tail expects.
    expects_grad : bool
        Whether step results carry the activation gradient (false for ``split_point == 0``).
    """

    session_id: str
    edge_id: str
    input_shape: tuple[int, ...]
    expects_grad: bool

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as an ``opened`` frame."""
        meta = {
            "session_id": self.session_id,
            "edge_id": self.edge_id,
            "input_shape": list(self.input_shape),
            "expects_grad": self.expects_grad,
        }
        return encode_frame("opened", meta, None, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> OpenReply:
        """Parse and validate an ``opened`` frame."""
        meta = expect_kind(frame, "opened").meta
        shape = meta.get("input_shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidMessageError("field 'input_shape' must be a list of integers")
        return cls(
            str_field(meta, "session_id"), str_field(meta, "edge_id"), tuple(shape), bool(meta.get("expects_grad"))
        )


@dataclass(frozen=True)
class CloseRequest:
    """Close a session and fetch its tail.

    Attributes
    ----------
    session_id : str
        The session.
    token : str
        The token that opened it.
    """

    session_id: str
    token: str

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``close`` frame."""
        return encode_frame("close", {"session_id": self.session_id, "token": self.token}, None, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> CloseRequest:
        """Parse and validate a ``close`` frame."""
        meta = expect_kind(frame, "close").meta
        return cls(str_field(meta, "session_id", max_len=128), str_field(meta, "token"))


@dataclass
class SessionMetrics:
    """What one session did on the edge server.

    Attributes
    ----------
    batches : int
        Optimizer steps taken (complete batches).
    micro_batches : int
        Step messages processed.
    samples : int
        Samples processed.
    loss_sum : float
        Sum over samples of the cross-entropy (``loss_sum / samples`` is the mean loss).
    compute_s : float
        Seconds of forward, loss, backward and optimizer steps.
    server_s : float
        Seconds spent handling step messages (decode to encode).
    duration_s : float
        Seconds from open to close.
    dp_steps : int
        DP-SGD steps taken on the tail (0 without DP); with ``dp_noise_multiplier`` and ``dp_sample_rate`` this is
        the session's accountant history, which the device adds to its node's.
    dp_noise_multiplier, dp_sample_rate : float
        The tail's DP-SGD noise multiplier and sample rate (0 without DP).
    dp_epsilon : float
        Epsilon the session's own steps spent (at the request's delta; 0 without DP).
    """

    batches: int = 0
    micro_batches: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    compute_s: float = 0.0
    server_s: float = 0.0
    duration_s: float = 0.0
    dp_steps: int = 0
    dp_noise_multiplier: float = 0.0
    dp_sample_rate: float = 0.0
    dp_epsilon: float = 0.0

    @property
    def mean_loss(self) -> float:
        """Mean training loss over the session's samples (``nan`` if none)."""
        return self.loss_sum / self.samples if self.samples else math.nan

    def to_dict(self) -> dict[str, float | int]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SessionMetrics:
        """Parse and validate the JSON form."""
        if not isinstance(data, dict):
            raise InvalidMessageError("field 'metrics' must be an object")
        return cls(
            batches=int_field(data, "batches"),
            micro_batches=int_field(data, "micro_batches"),
            samples=int_field(data, "samples"),
            loss_sum=float_field(data, "loss_sum"),
            compute_s=float_field(data, "compute_s", 0.0),
            server_s=float_field(data, "server_s", 0.0),
            duration_s=float_field(data, "duration_s", 0.0),
            dp_steps=int_field(data, "dp_steps") if "dp_steps" in data else 0,
            dp_noise_multiplier=float_field(data, "dp_noise_multiplier", 0.0) if "dp_noise_multiplier" in data else 0.0,
            dp_sample_rate=float_field(data, "dp_sample_rate", 0.0, 1.0) if "dp_sample_rate" in data else 0.0,
            dp_epsilon=float_field(data, "dp_epsilon", 0.0) if "dp_epsilon" in data else 0.0,
        )


@dataclass
class CloseReply:
    """The trained tail and the session's metrics.

    Attributes
    ----------
    state : dict of str to torch.Tensor
        The tail's state dict (full-model keys).
    metrics : SessionMetrics
        What the session did.
    """

    state: dict[str, torch.Tensor]
    metrics: SessionMetrics = field(default_factory=SessionMetrics)

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``closed`` frame."""
        return encode_frame("closed", {"metrics": self.metrics.to_dict()}, self.state, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> CloseReply:
        """Parse and validate a ``closed`` frame."""
        meta = expect_kind(frame, "closed").meta
        return cls(dict(frame.tensors), SessionMetrics.from_dict(meta.get("metrics")))
