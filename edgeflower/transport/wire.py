"""Wire formats of the training stream's tensors: activations going up and gradients coming down.

A run chooses one with the run-config key ``wire-dtype``; the session's open carries it, and every ``step`` and
``step_result`` frame names it (meta ``wire``), so each side decodes what it receives and answers in kind.

==================  ================================================  ===================  ======================
format              what goes on the wire                             bytes per element    error (relative)
==================  ================================================  ===================  ======================
``float32``         the tensor as it is (bit-exact; the default)      4                    0
``bfloat16``        the tensor rounded to bfloat16                    2                    <= 2**-8 per element
``float16``         the tensor rounded to float16 (range +-65504)     2                    <= 2**-11 per element
``int8``            ``round(x / s)`` in [-127, 127], one float32      1                    <= s / 2 per element,
                    scale ``s = max|x| / 127`` (tensor ``NAME-scale``                      ``s = max|x| / 127``
                    of shape ``[]``)
``int8-channel``    as ``int8`` with one scale per channel (dim 1),   1                    <= s_c / 2 in channel c
                    ``NAME-scale`` of shape ``[C]``
==================  ================================================  ===================  ======================

Decoding checks the tensor's dtype against the format, the scale's dtype, shape, finiteness and range
(``0 < s <= FLOAT32_MAX / 127``: every dequantised value is finite) and that the float32 result is within the
frame limit *before* allocating it; any violation raises :class:`~edgeflower.transport.errors.InvalidMessageError`.
Decoded tensors are float32 (``float32`` passes the tensor through unchanged, in its own dtype).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch

from edgeflower.transport.codec import Limits
from edgeflower.transport.errors import InvalidMessageError
from edgeflower.transport.fields import all_finite

__all__ = [
    "WIRE_DTYPES",
    "WireForm",
    "check_wire_dtype",
    "decode_wire",
    "encode_wire",
    "scale_name",
    "wire_names",
    "wire_nbytes",
    "wire_roundtrip",
]

WIRE_DTYPES = ("float32", "bfloat16", "float16", "int8", "int8-channel")
"""The wire formats, ``float32`` (exact) first."""

_FLOATS = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_QUANTISED = ("int8", "int8-channel")
_QMAX = 127
_MAX_SCALE = torch.finfo(torch.float32).max / _QMAX
_NO_LIMIT = Limits(max_message_bytes=2**62)


def check_wire_dtype(wire: str) -> str:
    """``wire`` if it names a wire format, else raise :class:`InvalidMessageError` listing them."""
    if wire not in WIRE_DTYPES:
        raise InvalidMessageError(f"wire format {wire!r:.40} is not one of {', '.join(WIRE_DTYPES)}")
    return wire


def scale_name(name: str) -> str:
    """Name of the scale tensor that goes with quantised tensor ``name``."""
    return f"{name}-scale"


def wire_names(name: str, wire: str) -> set[str]:
    """The frame's tensor names that carry tensor ``name`` in format ``wire``."""
    return {name, scale_name(name)} if wire in _QUANTISED else {name}


def encode_wire(name: str, tensor: torch.Tensor, wire: str) -> dict[str, torch.Tensor]:
    """The frame tensors that carry ``tensor`` as ``name`` in format ``wire``.

    Raises
    ------
    InvalidMessageError
        If the format is unknown, the tensor holds NaN or Inf (a compressed format), is out of float16's range
        (``float16``) or has no channel dimension (``int8-channel``).
    """
    check_wire_dtype(wire)
    if wire == "float32":
        return {name: tensor}
    t = tensor.detach()
    if wire in _FLOATS:
        dtype = _FLOATS[wire]
        if t.numel():  # one pass for both checks: NaN and Inf reach the extremes
            low, high = (float(v) for v in torch.aminmax(t))
            if not (math.isfinite(low) and math.isfinite(high)):
                raise InvalidMessageError(f"tensor {name!r} holds NaN or Inf; it cannot be sent as {wire}")
            if (top := max(-low, high)) > torch.finfo(dtype).max:
                raise InvalidMessageError(f"tensor {name!r} holds values out of {wire}'s range (max |x| {top:.3g})")
        return {name: t.to(dtype)}
    t = t.to(torch.float32)
    if wire == "int8-channel":
        if t.dim() < 2:
            raise InvalidMessageError(f"tensor {name!r} of shape {list(t.shape)} has no channel dimension (dim 1)")
        amax = _channel_amax(t)
        scale = amax / _QMAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all zero (or subnormal): any scale will do
        view = scale.reshape([1, -1] + [1] * (t.dim() - 2))
    else:
        lo, hi = torch.aminmax(t) if t.numel() else (torch.tensor(0.0), torch.tensor(0.0))
        amax = torch.maximum(hi, lo.neg())  # NaN or Inf anywhere end up here: checked below
        scale = amax / _QMAX
        scale = scale if float(scale) > 0 else torch.tensor(1.0)  # all zero (or subnormal): any scale will do
        view = scale
    if not all_finite(amax):
        raise InvalidMessageError(f"tensor {name!r} holds NaN or Inf; it cannot be sent as {wire}")
    q = torch.div(t, view).round_().clamp_(-_QMAX, _QMAX).to(torch.int8)
    return {name: q, scale_name(name): scale.to(torch.float32)}


def _channel_amax(t: torch.Tensor) -> torch.Tensor:
    """``max |t|`` per channel (dim 1), NaN where a channel holds one."""
    if not t.numel():
        return torch.zeros(t.shape[1])
    dims = [d for d in range(t.dim()) if d != 1]
    return torch.maximum(t.amax(dim=dims), t.amin(dim=dims).neg_())


def decode_wire(
    tensors: Mapping[str, torch.Tensor], name: str, wire: str, limits: Limits | None = None
) -> torch.Tensor:
    """Tensor ``name`` from the frame's ``tensors`` in format ``wire``: float32 (``float32``: as sent).

    Parameters
    ----------
    tensors : mapping of str to torch.Tensor
        The frame's tensors (the caller checks the set of names: :func:`wire_names`).
    name : str
        The tensor.
    wire : str
        Its format.
    limits : Limits, optional
        The decoded float32 tensor must fit ``limits.max_message_bytes`` (checked before it is allocated).

    Raises
    ------
    InvalidMessageError
        A missing tensor, a dtype that does not match the format, a bad scale (wrong dtype or shape, not finite,
        not positive, too large) or a decoded tensor over the limit.
    """
    check_wire_dtype(wire)
    if name not in tensors:
        raise InvalidMessageError(f"the frame lacks the tensor {name!r}")
    t = tensors[name]
    if wire == "float32":
        return t
    limit = (limits or Limits()).max_message_bytes
    if t.numel() * 4 > limit:
        raise InvalidMessageError(
            f"tensor {name!r} {list(t.shape)} decodes to {t.numel() * 4} bytes of float32, over the limit of {limit}"
        )
    expected = _FLOATS.get(wire, torch.int8)
    if t.dtype != expected:
        raise InvalidMessageError(f"tensor {name!r} is {t.dtype} but the wire format {wire} sends {expected}")
    if wire in _FLOATS:
        return t.to(torch.float32)
    scale = _scale(tensors, name, t, wire)
    view = scale.reshape([1, -1] + [1] * (t.dim() - 2)) if wire == "int8-channel" else scale
    return t.to(torch.float32).mul_(view)


def _scale(tensors: Mapping[str, torch.Tensor], name: str, q: torch.Tensor, wire: str) -> torch.Tensor:
    """The checked scale of quantised tensor ``q``."""
    sname = scale_name(name)
    if sname not in tensors:
        raise InvalidMessageError(f"quantised tensor {name!r} comes without its scale {sname!r}")
    scale = tensors[sname]
    shape = [q.shape[1]] if wire == "int8-channel" and q.dim() >= 2 else []
    if wire == "int8-channel" and q.dim() < 2:
        raise InvalidMessageError(f"tensor {name!r} of shape {list(q.shape)} has no channel dimension for {wire}")
    if scale.dtype != torch.float32 or list(scale.shape) != shape:
        raise InvalidMessageError(
            f"scale {sname!r} must be float32{shape} for {wire}, got {scale.dtype}{list(scale.shape)}"
        )
    if scale.numel() and not bool(((scale > 0) & (scale <= _MAX_SCALE)).all()):  # NaN fails both comparisons
        bad = scale[~((scale > 0) & (scale <= _MAX_SCALE))][0].item()
        raise InvalidMessageError(f"scale {sname!r} must be finite and in (0, {_MAX_SCALE:.3g}], got {bad!r}")
    return scale


def wire_nbytes(tensor: torch.Tensor | None, wire: str) -> int:
    """Bytes of ``tensor``'s data in format ``wire`` (scales included; ``None`` counts nothing)."""
    if tensor is None:
        return 0
    if wire == "float32" or not tensor.is_floating_point():
        return tensor.numel() * tensor.element_size()
    if wire in _FLOATS:
        return tensor.numel() * 2
    channels = tensor.shape[1] if wire == "int8-channel" and tensor.dim() >= 2 else 1
    return tensor.numel() + 4 * channels


def wire_roundtrip(tensor: torch.Tensor, wire: str) -> torch.Tensor:
    """What the receiving side decodes when ``tensor`` is sent in format ``wire`` (``tensor`` itself for
    ``float32``)."""
    if wire == "float32":
        return tensor
    return decode_wire(encode_wire("t", tensor, wire), "t", wire, _NO_LIMIT)


class WireForm(NamedTuple):
    """A tensor kept in its wire form (e.g. a replay log: half or a quarter of the memory), decoded on demand into
    what the receiving side decodes."""

    tensors: dict[str, torch.Tensor]
    wire: str

    @classmethod
    def of(cls, tensor: torch.Tensor, wire: str) -> WireForm:
        """``tensor`` encoded as ``wire``."""
        return cls(encode_wire("t", tensor, wire), wire)

    @property
    def shape(self) -> torch.Size:
        """The shape of the tensor it carries."""
        return self.tensors["t"].shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype it travels in (``int8`` for the quantised formats)."""
        return self.tensors["t"].dtype

    def decode(self) -> torch.Tensor:
        """What the receiving side decodes (float32)."""
        return decode_wire(self.tensors, "t", self.wire, _NO_LIMIT)

    def frame_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The frame tensors that carry it as ``name`` (what :func:`encode_wire` gives for ``name``, without
        encoding again)."""
        return {name if key == "t" else scale_name(name): t for key, t in self.tensors.items()}
