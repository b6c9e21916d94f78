"""The offload channel's messages and their mapping onto codec frames.

=================  ===============  ====================================================  ====================
message            frame kind       meta                                                  tensors
=================  ===============  ====================================================  ====================
OpenRequest        ``open``         token, model (ModelSpec dict), split_point,           the tail's state dict
                                    optimizer {lr, momentum, weight_decay},
                                    dp (optional DPParams dict: DP-SGD on the tail)
OpenReply          ``opened``       session_id, edge_id, input_shape, expects_grad        --
StepRequest        ``step``         batch, micro, num_micro, batch_size                   activations, labels
StepResult         ``step_result``  batch, micro, loss, stepped, server_s, compute_s      grad (if k > 0)
(end of stream)    ``end``          --                                                    --
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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.codec import Frame, Limits, encode_frame
from edgeflower.transport.errors import InvalidMessageError

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
    "expect_kind",
]

_MAX_INDEX = 2**53

END_KIND = "end"
"""Kind of the frame that ends a training stream cleanly."""


def expect_kind(frame: Frame, kind: str) -> Frame:
    """Return ``frame`` if it is of ``kind``, else raise :class:`InvalidMessageError`."""
    if frame.kind != kind:
        raise InvalidMessageError(f"expected a {kind!r} message, got {frame.kind!r:.50}")
    return frame


def _int(meta: Mapping[str, Any], key: str, lo: int = 0, hi: int = _MAX_INDEX) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidMessageError(f"field {key!r} must be an integer in [{lo}, {hi}], got {value!r:.50}")
    return value


def _float(meta: Mapping[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidMessageError(f"field {key!r} must be a number in [{lo}, {hi}], got {value!r:.50}")
    return float(value)


def _str(meta: Mapping[str, Any], key: str, optional: bool = False, max_len: int = 4096) -> str:
    value = meta.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidMessageError(f"field {key!r} must be a string of at most {max_len} characters")
    return value


def _tensor(frame: Frame, name: str) -> torch.Tensor:
    if name not in frame.tensors:
        raise InvalidMessageError(f"{frame.kind!r} message lacks the tensor {name!r}")
    return frame.tensors[name]


@dataclass(frozen=True)
class OptimizerSettings:
    """The server-side SGD optimizer's settings (same as :func:`edgeflower.training.make_optimizer`).

    Attributes
    ----------
    lr : float
        Learning rate (> 0).
    momentum : float
        Momentum in ``[0, 1)``.
    weight_decay : float
        L2 penalty (>= 0).
    proximal_mu : float
        FedProx's proximal coefficient (>= 0): each side adds ``mu * (w - w_round_start)`` to its gradients.
    """

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        values = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}
        values["proximal_mu"] = self.proximal_mu
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values.values()
        ):
            raise InvalidMessageError(f"optimizer settings must be finite numbers, got {values}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0 and self.proximal_mu >= 0):
            raise InvalidMessageError(f"optimizer needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, got {values}")

    def to_dict(self) -> dict[str, float]:
        """JSON form."""
        out = {"lr": float(self.lr), "momentum": float(self.momentum), "weight_decay": float(self.weight_decay)}
        if self.proximal_mu:
            out["proximal_mu"] = float(self.proximal_mu)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> OptimizerSettings:
        """Parse and validate the JSON form."""
        if not isinstance(data, dict):
            raise InvalidMessageError("field 'optimizer' must be an object")
        mu = _float(data, "proximal_mu") if "proximal_mu" in data else 0.0
        return cls(_float(data, "lr"), _float(data, "momentum"), _float(data, "weight_decay"), mu)


@dataclass(frozen=True)
class DPParams:
    """DP-SGD settings for the edge server's tail (``dp = full``).

    Attributes
    ----------
    noise_multiplier : float
        Noise std over the clipping bound (>= 0).
    max_grad_norm : float
        Per-sample clipping bound (> 0).
    expected_batch_size : int
        ``q * N``: the noisy sum of clipped gradients is divided by it.
    sample_rate : float
        Poisson sample rate ``q`` in ``(0, 1]`` (for the session's accountant).
    delta : float
        The ``delta`` the session reports its epsilon at, in ``(0, 1)``.
    seed : int
        Seed of the noise generator; ``-1`` (the default) = a fresh random seed (a seed known to others would let
        them remove the noise: use one only in tests).
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    sample_rate: float
    delta: float
    seed: int = -1

    def __post_init__(self) -> None:
        DPParams.from_dict(self.to_dict())  # validates

    def to_dict(self) -> dict[str, float | int]:
        """JSON form."""
        return {
            "noise_multiplier": float(self.noise_multiplier),
            "max_grad_norm": float(self.max_grad_norm),
            "expected_batch_size": int(self.expected_batch_size),
            "sample_rate": float(self.sample_rate),
            "delta": float(self.delta),
            "seed": int(self.seed),
        }

    @staticmethod
    def from_dict(data: Any) -> DPParams:
        """Parse and validate the JSON form."""
        if not isinstance(data, dict):
            raise InvalidMessageError("field 'dp' must be an object")
        values = (
            _float(data, "noise_multiplier", 0.0, 1e6),
            _float(data, "max_grad_norm", 1e-12, 1e12),
            _int(data, "expected_batch_size", 1, 2**31),
            _float(data, "sample_rate", 1e-12, 1.0),
            _float(data, "delta", 1e-300, 1.0 - 1e-12),
            _int(data, "seed", -1, 2**63 - 1),
        )
        params = object.__new__(DPParams)
        for name, value in zip(
            ("noise_multiplier", "max_grad_norm", "expected_batch_size", "sample_rate", "delta", "seed"),
            values,
            strict=True,
        ):
            object.__setattr__(params, name, value)
        return params


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
    """

    token: str
    spec: ModelSpec
    split_point: int
    optimizer: OptimizerSettings
    tail_state: dict[str, torch.Tensor]
    dp: DPParams | None = None

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
            token=_str(meta, "token"),
            spec=spec,
            split_point=_int(meta, "split_point", 0, 100_000),
            optimizer=OptimizerSettings.from_dict(meta.get("optimizer")),
            tail_state=dict(frame.tensors),
            dp=None if meta.get("dp") is None else DPParams.from_dict(meta["dp"]),
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
        return cls(_str(meta, "session_id"), _str(meta, "edge_id"), tuple(shape), bool(meta.get("expects_grad")))


@dataclass
class StepRequest:
    """One micro-batch of activations and labels going up.

    Attributes
    ----------
    activations : torch.Tensor
        The head's output ``(n, *input_shape)`` (the raw input when ``split_point == 0``); float32, float16 or
        bfloat16 (the gradient comes back in the same dtype).
    labels : torch.Tensor
        Class labels ``(n,)``.
    batch : int
        Batch index (increasing within a session).
    micro : int
        Micro-batch index within the batch, ``0 <= micro < num_micro``.
    num_micro : int
        Micro-batches in this batch; the server takes one optimizer step after the last one.
    batch_size : int
        Samples in the whole batch; each micro-batch's loss is scaled by ``n / batch_size``.
    """

    activations: torch.Tensor
    labels: torch.Tensor
    batch: int
    micro: int = 0
    num_micro: int = 1
    batch_size: int = 0

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``step`` frame."""
        meta = {"batch": self.batch, "micro": self.micro, "num_micro": self.num_micro, "batch_size": self.batch_size}
        return encode_frame("step", meta, {"activations": self.activations, "labels": self.labels}, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> StepRequest:
        """Parse and validate a ``step`` frame (shapes are checked against the session by the server)."""
        meta = expect_kind(frame, "step").meta
        if set(frame.tensors) != {"activations", "labels"}:
            raise InvalidMessageError(
                f"a step message carries exactly 'activations' and 'labels', got {list(frame.tensors)}"
            )
        num_micro = _int(meta, "num_micro", 1, 1_000_000)
        return cls(
            activations=_tensor(frame, "activations"),
            labels=_tensor(frame, "labels"),
            batch=_int(meta, "batch"),
            micro=_int(meta, "micro", 0, num_micro - 1),
            num_micro=num_micro,
            batch_size=_int(meta, "batch_size", 1, 2**31),
        )


@dataclass
class StepResult:
    """The edge server's answer to one :class:`StepRequest`.

    Attributes
    ----------
    batch, micro : int
        Echo of the request's indices.
    loss : float
        Mean cross-entropy of this micro-batch (unscaled).
    stepped : bool
        Whether the server took its optimizer step after this micro-batch (the batch's last one).
    server_s : float
        Seconds the server spent on the message, from decoding it to encoding this reply.
    compute_s : float
        Of which forward, loss, backward and optimizer step.
    grad : torch.Tensor or None
        Gradient of the loss with respect to the activations (``None`` when ``split_point == 0``).
    """

    batch: int
    micro: int
    loss: float
    stepped: bool
    server_s: float
    compute_s: float
    grad: torch.Tensor | None = None

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``step_result`` frame."""
        meta = {
            "batch": self.batch,
            "micro": self.micro,
            "loss": self.loss,
            "stepped": self.stepped,
            "server_s": self.server_s,
            "compute_s": self.compute_s,
        }
        return encode_frame("step_result", meta, None if self.grad is None else {"grad": self.grad}, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> StepResult:
        """Parse and validate a ``step_result`` frame."""
        meta = expect_kind(frame, "step_result").meta
        return cls(
            batch=_int(meta, "batch"),
            micro=_int(meta, "micro"),
            loss=_float(meta, "loss"),
            stepped=bool(meta.get("stepped")),
            server_s=_float(meta, "server_s", 0.0),
            compute_s=_float(meta, "compute_s", 0.0),
            grad=frame.tensors.get("grad"),
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
        return cls(_str(meta, "session_id", max_len=128), _str(meta, "token"))


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
            batches=_int(data, "batches"),
            micro_batches=_int(data, "micro_batches"),
            samples=_int(data, "samples"),
            loss_sum=_float(data, "loss_sum"),
            compute_s=_float(data, "compute_s", 0.0),
            server_s=_float(data, "server_s", 0.0),
            duration_s=_float(data, "duration_s", 0.0),
            dp_steps=_int(data, "dp_steps") if "dp_steps" in data else 0,
            dp_noise_multiplier=_float(data, "dp_noise_multiplier", 0.0) if "dp_noise_multiplier" in data else 0.0,
            dp_sample_rate=_float(data, "dp_sample_rate", 0.0, 1.0) if "dp_sample_rate" in data else 0.0,
            dp_epsilon=_float(data, "dp_epsilon", 0.0) if "dp_epsilon" in data else 0.0,
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


@dataclass(frozen=True)
class HealthInfo:
    """An edge server's health.

    Attributes
    ----------
    status : str
        ``"serving"`` (or ``"stopping"``).
    edge_id : str
        The server's id (empty if none).
    sessions : int
        Open sessions.
    version : int
        Wire-format version.
    """

    status: str
    edge_id: str
    sessions: int
    version: int

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``health_info`` frame."""
        return encode_frame("health_info", asdict(self), None, limits)

    @classmethod
    def from_frame(cls, frame: Frame) -> HealthInfo:
        """Parse and validate a ``health_info`` frame."""
        meta = expect_kind(frame, "health_info").meta
        return cls(_str(meta, "status"), _str(meta, "edge_id"), _int(meta, "sessions"), _int(meta, "version"))
