"""Reading a frame's fields with their type and range checked: what every message's ``from_frame`` builds on.

Each reader returns the field or raises :class:`~edgeflower.transport.errors.InvalidMessageError` naming the field
and what it must be; the offending value is quoted truncated (a hostile peer chooses it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from edgeflower.transport.codec import Frame
from edgeflower.transport.errors import InvalidMessageError

__all__ = ["MAX_INDEX", "all_finite", "expect_kind", "float_field", "int_field", "str_field", "tensor_field"]

MAX_INDEX = 2**53
"""The default upper bound of an integer field (the largest integer a JSON number holds exactly)."""


def expect_kind(frame: Frame, kind: str) -> Frame:
    """Return ``frame`` if it is of ``kind``, else raise :class:`InvalidMessageError`."""
    if frame.kind != kind:
        raise InvalidMessageError(f"expected a {kind!r} message, got {frame.kind!r:.50}")
    return frame


def int_field(meta: Mapping[str, Any], key: str, lo: int = 0, hi: int = MAX_INDEX) -> int:
    """``meta[key]`` if it is an integer (not a bool) in ``[lo, hi]``."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidMessageError(f"field {key!r} must be an integer in [{lo}, {hi}], got {value!r:.50}")
    return value


def float_field(meta: Mapping[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``meta[key]`` as a float if it is a number (not a bool) in ``[lo, hi]`` (NaN is in no range)."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidMessageError(f"field {key!r} must be a number in [{lo}, {hi}], got {value!r:.50}")
    return float(value)


def str_field(meta: Mapping[str, Any], key: str, optional: bool = False, max_len: int = 4096) -> str:
    """``meta[key]`` if it is a string of at most ``max_len`` characters (``""`` for a missing optional one)."""
    value = meta.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidMessageError(f"field {key!r} must be a string of at most {max_len} characters")
    return value


def tensor_field(frame: Frame, name: str) -> torch.Tensor:
    """The frame's tensor ``name``, which must be there."""
    if name not in frame.tensors:
        raise InvalidMessageError(f"{frame.kind!r} message lacks the tensor {name!r}")
    return frame.tensors[name]


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds no NaN and no Inf (other dtypes: always).

    Exact and cheap: the float32 sum of finite values is finite unless it overflows, and any NaN or Inf makes it
    NaN or Inf; only a sum that is not finite needs the element-wise check.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(tensor).all())
