"""The training stream's messages: :class:`StepRequest` (activations and labels up), :class:`StepResult` (the
activations' gradient down) and the ``end`` frame (:data:`END_KIND`) that ends a stream cleanly, optionally announcing
a migration (:func:`end_frame`, :func:`ends_before_migration`).

See :mod:`edgeflower.transport.messages` for the table of every message and its frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from edgeflower.transport.codec import Frame, Limits, encode_frame
from edgeflower.transport.errors import InvalidMessageError
from edgeflower.transport.fields import expect_kind, float_field, int_field, str_field, tensor_field
from edgeflower.transport.wire import WireForm, check_wire_dtype, decode_wire, encode_wire, wire_names

__all__ = ["END_KIND", "StepRequest", "StepResult", "end_frame", "ends_before_migration"]

END_KIND = "end"
"""Kind of the frame that ends a training stream cleanly."""


def end_frame(then_migrate: bool = False) -> bytes:
    """The ``end`` frame; with ``then_migrate`` it says that the device migrates the session next (the edge server
    then exports it as the stream ends, while the device finishes its batch)."""
    return encode_frame(END_KIND, {"next": "migrate"} if then_migrate else None)


def ends_before_migration(frame: Frame) -> bool:
    """Whether an ``end`` frame announces a migration.

    Raises
    ------
    InvalidMessageError
        If it carries a tensor, or metadata other than nothing or ``{"next": "migrate"}``.
    """
    meta = expect_kind(frame, END_KIND).meta
    if set(meta) - {"next"} or meta.get("next", "migrate") != "migrate":
        raise InvalidMessageError(f"an end frame carries nothing or {{'next': 'migrate'}}, got {meta!r:.200}")
    if frame.tensors:
        raise InvalidMessageError(f"an end frame carries no tensors, got {sorted(frame.tensors)!r:.200}")
    return bool(meta)


@dataclass
class StepRequest:
    """One micro-batch of activations and labels going up.

    Attributes
    ----------
    activations : torch.Tensor or WireForm
        The head's output ``(n, *input_shape)`` (the raw input when ``split_point == 0``); float32, float16 or
        bfloat16 (the gradient comes back in the same dtype), or already in its wire form (a sender that keeps the
        encoded form, e.g. for a replay log, encodes once).
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
    wire : str
        How the activations travel (:mod:`~edgeflower.transport.wire`; meta ``wire``, absent for ``float32``);
        a decoded request holds them as float32 (as sent for ``float32``).
    """

    activations: torch.Tensor | WireForm
    labels: torch.Tensor
    batch: int
    micro: int = 0
    num_micro: int = 1
    batch_size: int = 0
    wire: str = "float32"

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``step`` frame."""
        meta: dict[str, Any] = {
            "batch": self.batch,
            "micro": self.micro,
            "num_micro": self.num_micro,
            "batch_size": self.batch_size,
        }
        if self.wire != "float32":
            meta["wire"] = self.wire
        acts = self.activations
        if isinstance(acts, WireForm):
            if acts.wire != self.wire:
                raise InvalidMessageError(f"activations encoded as {acts.wire} in a {self.wire} step")
            encoded = acts.frame_tensors("activations")
        else:
            encoded = encode_wire("activations", acts, self.wire)
        return encode_frame("step", meta, {**encoded, "labels": self.labels}, limits)

    @classmethod
    def from_frame(cls, frame: Frame, limits: Limits | None = None) -> StepRequest:
        """Parse and validate a ``step`` frame (shapes are checked against the session by the server); quantised
        activations are decoded within ``limits``."""
        meta = expect_kind(frame, "step").meta
        wire = _wire(meta)
        names = wire_names("activations", wire) | {"labels"}
        if set(frame.tensors) != names:
            raise InvalidMessageError(
                f"a {wire} step message carries exactly {sorted(names)}, got {list(frame.tensors)}"
            )
        num_micro = int_field(meta, "num_micro", 1, 1_000_000)
        return cls(
            activations=decode_wire(frame.tensors, "activations", wire, limits),
            labels=tensor_field(frame, "labels"),
            batch=int_field(meta, "batch"),
            micro=int_field(meta, "micro", 0, num_micro - 1),
            num_micro=num_micro,
            batch_size=int_field(meta, "batch_size", 1, 2**31),
            wire=wire,
        )


def _wire(meta: Mapping[str, Any]) -> str:
    """The frame's wire format (``float32`` when absent)."""
    return check_wire_dtype(str_field(meta, "wire", optional=True, max_len=32) or "float32")


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
    wire : str
        How the gradient travels (the request's format; meta ``wire``, absent for ``float32``).
    """

    batch: int
    micro: int
    loss: float
    stepped: bool
    server_s: float
    compute_s: float
    grad: torch.Tensor | None = None
    wire: str = "float32"

    def to_bytes(self, limits: Limits | None = None) -> bytes:
        """Encode as a ``step_result`` frame."""
        meta: dict[str, Any] = {
            "batch": self.batch,
            "micro": self.micro,
            "loss": self.loss,
            "stepped": self.stepped,
            "server_s": self.server_s,
            "compute_s": self.compute_s,
        }
        if self.wire != "float32":
            meta["wire"] = self.wire
        tensors = None if self.grad is None else encode_wire("grad", self.grad, self.wire)
        return encode_frame("step_result", meta, tensors, limits)

    @classmethod
    def from_frame(cls, frame: Frame, limits: Limits | None = None) -> StepResult:
        """Parse and validate a ``step_result`` frame; a quantised gradient is decoded within ``limits``."""
        meta = expect_kind(frame, "step_result").meta
        wire = _wire(meta)
        if frame.tensors and set(frame.tensors) != wire_names("grad", wire):
            raise InvalidMessageError(
                f"a {wire} step result carries {sorted(wire_names('grad', wire))} or nothing, got {list(frame.tensors)}"
            )
        return cls(
            batch=int_field(meta, "batch"),
            micro=int_field(meta, "micro"),
            loss=float_field(meta, "loss"),
            stepped=bool(meta.get("stepped")),
            server_s=float_field(meta, "server_s", 0.0),
            compute_s=float_field(meta, "compute_s", 0.0),
            grad=decode_wire(frame.tensors, "grad", wire, limits) if frame.tensors else None,
            wire=wire,
        )
