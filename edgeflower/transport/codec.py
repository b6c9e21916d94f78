"""The tensor codec: one self-describing binary frame per message, no pickle.

Frame layout (all integers little-endian)::

    offset  size  field
    0       4     magic  b"EFLW"
    4       1     version (currently 1)
    5       3     reserved, must be zero
    8       4     header length H (uint32)
    12      H     header: UTF-8 JSON object
                    {"kind": str,                      message kind, e.g. "step"
                     "meta": {...},                    JSON scalars / lists / objects of the message
                     "tensors": [{"name": str, "dtype": str, "shape": [int, ...]}, ...]}
    12+H    ...   the tensors' raw bytes, concatenated in header order, each C-contiguous little-endian,
                  exactly prod(shape) * itemsize(dtype) bytes; nothing may follow the last tensor

Allowed dtypes (:data:`DTYPES`): ``float32, float16, bfloat16, int64, int32, uint8, int8, bool`` (``int8``: the
quantised wire formats of :mod:`~edgeflower.transport.wire`). Decoding validates the
magic, the version, the header size, the JSON structure, every tensor's name, dtype, rank and dims, that the byte
counts add up exactly to the frame length and that the frame is within :attr:`Limits.max_message_bytes`; any
violation raises :class:`~edgeflower.transport.errors.InvalidMessageError` (or
:class:`~edgeflower.transport.errors.MessageTooLargeError`). Decoded tensors own their memory (a copy of the frame).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from edgeflower.transport.errors import InvalidMessageError, MessageTooLargeError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DTYPES",
    "MAGIC",
    "VERSION",
    "Frame",
    "Limits",
    "decode_frame",
    "decode_header",
    "encode_frame",
]

MAGIC = b"EFLW"
"""The first four bytes of every frame."""

VERSION = 1
"""Frame format version."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default size limit of one frame (64 MiB)."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}
"""Dtype whitelist: wire name -> torch dtype."""

_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_PREFIX = struct.Struct("<4sB3sI")
_MAX_NAME = 256

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("edgeflower.transport.codec needs a little-endian host")


@dataclass(frozen=True)
class Limits:
    """Bounds every decoded frame must respect.

    Attributes
    ----------
    max_message_bytes : int
        Largest frame, in bytes.
    max_header_bytes : int
        Largest JSON header, in bytes.
    max_tensors : int
        Most tensors in one frame.
    max_dims : int
        Highest tensor rank.
    max_dim_size : int
        Largest single dimension.
    max_depth : int
        Deepest nesting of the JSON header (objects and lists).
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_header_bytes: int = 1024 * 1024
    max_tensors: int = 4096
    max_dims: int = 8
    max_dim_size: int = 2**31 - 1
    max_depth: int = 32


@dataclass
class Frame:
    """A decoded message: its kind, its JSON metadata and its named tensors (in wire order).

    Attributes
    ----------
    kind : str
        Message kind.
    meta : dict
        JSON metadata.
    tensors : dict of str to torch.Tensor
        Named tensors.
    """

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview | bytes:
    """The tensor's raw bytes as a view (no copy for a contiguous CPU tensor): the frame's one copy is the join."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return memoryview(flat.view(torch.uint8).numpy())


def encode_frame(
    kind: str,
    meta: Mapping[str, Any] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    limits: Limits | None = None,
) -> bytes:
    """Encode a message as one frame.

    Parameters
    ----------
    kind : str
        Message kind.
    meta : mapping, optional
        JSON-serialisable metadata.
    tensors : mapping of str to torch.Tensor, optional
        Named tensors (any device; copied to CPU); dtypes must be in :data:`DTYPES`.
    limits : Limits, optional
        When given, a frame over ``limits.max_message_bytes`` raises :class:`MessageTooLargeError` (nothing is
        sent).

    Returns
    -------
    bytes
        The frame.

    Raises
    ------
    InvalidMessageError
        If a dtype is not allowed, a name is invalid or the metadata is not JSON-serialisable.
    """
    specs: list[dict[str, Any]] = []
    payloads: list[memoryview | bytes] = []  # views of the tensors' memory, alive until the join below
    for name, tensor in (tensors or {}).items():
        if not isinstance(tensor, torch.Tensor):
            raise InvalidMessageError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype not in _NAMES:
            raise InvalidMessageError(f"tensor {name!r} has dtype {tensor.dtype}, allowed: {', '.join(DTYPES)}")
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
            raise InvalidMessageError(f"invalid tensor name {name!r}")
        specs.append({"name": name, "dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape)})
        payloads.append(_tensor_bytes(tensor))
    try:
        header = json.dumps(
            {"kind": kind, "meta": dict(meta or {}), "tensors": specs}, separators=(",", ":"), allow_nan=True
        ).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(f"metadata of {kind!r} is not JSON-serialisable: {exc}") from exc
    frame = b"".join([_PREFIX.pack(MAGIC, VERSION, b"\0\0\0", len(header)), header, *payloads])
    if limits is not None and len(frame) > limits.max_message_bytes:
        raise MessageTooLargeError(
            f"{kind!r} message is {len(frame)} bytes, larger than the limit of {limits.max_message_bytes} bytes"
        )
    return frame


def _check_depth(value: Any, max_depth: int) -> None:
    """Raise :class:`InvalidMessageError` if JSON ``value`` nests deeper than ``max_depth`` (iteratively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise InvalidMessageError(f"header nests deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


_MAX_ELEMENTS = 2**48  # strides and storage sizes of any shape under this bound fit in int64


def _check_shape(name: str, shape: Any, limits: Limits) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > limits.max_dims:
        raise InvalidMessageError(
            f"tensor {name!r}: shape must be a list of at most {limits.max_dims} dims, got {shape!r}"
        )
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= limits.max_dim_size:
            raise InvalidMessageError(f"tensor {name!r}: invalid dimension {dim!r:.40} in shape {shape!r:.200}")
    if math.prod(max(dim, 1) for dim in shape) > _MAX_ELEMENTS:  # zero-size tensors too: strides would overflow
        raise InvalidMessageError(f"tensor {name!r}: shape {shape!r:.200} is too large (stride overflow)")
    return tuple(shape)


def decode_frame(data: bytes | bytearray | memoryview, limits: Limits | None = None) -> Frame:
    """Decode and validate one frame.

    Parameters
    ----------
    data : bytes-like
        The frame.
    limits : Limits, optional
        Bounds to enforce (defaults to :class:`Limits`).

    Returns
    -------
    Frame

    Raises
    ------
    MessageTooLargeError
        If the frame exceeds ``limits.max_message_bytes``.
    InvalidMessageError
        If anything about the frame is malformed.
    """
    limits = limits or Limits()
    view = memoryview(data).cast("B")
    header_len = _read_prefix(view, limits)
    kind, meta, specs = _read_header(view, header_len, limits)
    offset = _PREFIX.size + header_len
    tensors: dict[str, torch.Tensor] = {}
    for spec in specs:
        name, tensor, nbytes = _read_tensor(view, offset, spec, tensors, limits)
        tensors[name] = tensor
        offset += nbytes
    if offset != view.nbytes:
        raise InvalidMessageError(f"{view.nbytes - offset} unexpected bytes after the last tensor")
    return Frame(kind, meta, tensors)


def decode_header(data: bytes | bytearray | memoryview, limits: Limits | None = None) -> Frame:
    """Decode and validate only a frame's prefix and header: its kind and metadata, no tensors (an empty
    ``tensors``), reading at most ``limits.max_header_bytes``.

    A server checks a request's token with it before it decodes (and copies) the request's tensors, so a request
    without a valid token costs it no more than its header. :func:`decode_frame` still checks the whole frame.

    Raises
    ------
    MessageTooLargeError, InvalidMessageError
        As :func:`decode_frame`, for the prefix and the header.
    """
    limits = limits or Limits()
    view = memoryview(data).cast("B")
    kind, meta, _ = _read_header(view, _read_prefix(view, limits), limits)
    return Frame(kind, meta, {})


def _read_prefix(view: memoryview, limits: Limits) -> int:
    """Check the frame's size and fixed prefix (magic, version, reserved bytes); return the header length."""
    total = view.nbytes
    if total > limits.max_message_bytes:
        raise MessageTooLargeError(
            f"message is {total} bytes, larger than the limit of {limits.max_message_bytes} bytes"
        )
    if total < _PREFIX.size:
        raise InvalidMessageError(f"frame of {total} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, reserved, header_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise InvalidMessageError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise InvalidMessageError(f"unsupported frame version {version}, expected {VERSION}")
    if reserved != b"\0\0\0":
        raise InvalidMessageError("reserved prefix bytes must be zero")
    if header_len > limits.max_header_bytes or _PREFIX.size + header_len > total:
        raise InvalidMessageError(f"header length {header_len} exceeds the limit or the frame ({total} bytes)")
    return header_len


def _read_header(view: memoryview, header_len: int, limits: Limits) -> tuple[str, dict[str, Any], list[Any]]:
    """Parse and check the JSON header: ``(kind, meta, tensor specs)``."""
    try:
        header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + header_len]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"header is not valid UTF-8 JSON: {exc!s:.200}") from exc
    _check_depth(header, limits.max_depth)
    if not isinstance(header, dict) or set(header) != {"kind", "meta", "tensors"}:
        raise InvalidMessageError("header must be an object with exactly the keys kind, meta, tensors")
    kind, meta, specs = header["kind"], header["meta"], header["tensors"]
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(specs, list):
        raise InvalidMessageError("header fields have the wrong types (kind: str, meta: object, tensors: list)")
    if len(specs) > limits.max_tensors:
        raise InvalidMessageError(f"{len(specs)} tensors in one message, the limit is {limits.max_tensors}")
    return kind, meta, specs


def _read_tensor(
    view: memoryview, offset: int, spec: Any, seen: Mapping[str, torch.Tensor], limits: Limits
) -> tuple[str, torch.Tensor, int]:
    """Check one tensor spec (against the names ``seen`` before) and copy its bytes at ``offset``:
    ``(name, tensor, bytes used)``."""
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
        raise InvalidMessageError(f"tensor spec must have exactly name, dtype, shape: {spec!r:.200}")
    name, dtype_name = spec["name"], spec["dtype"]
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME or name in seen:
        raise InvalidMessageError(f"invalid or duplicate tensor name {name!r:.300}")
    if dtype_name not in DTYPES:
        raise InvalidMessageError(
            f"tensor {name!r}: dtype {dtype_name!r:.50} not allowed, allowed: {', '.join(DTYPES)}"
        )
    shape = _check_shape(name, spec["shape"], limits)
    dtype = DTYPES[dtype_name]
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if offset + nbytes > view.nbytes:
        raise InvalidMessageError(
            f"tensor {name!r} ({dtype_name}{list(shape)}) needs {nbytes} bytes, only {view.nbytes - offset} left"
        )
    if nbytes == 0:
        return name, torch.empty(shape, dtype=dtype), 0
    raw = bytearray(view[offset : offset + nbytes])
    if dtype == torch.bool and int(torch.frombuffer(raw, dtype=torch.uint8).max()) > 1:  # vectorised: no GIL held
        raise InvalidMessageError(f"tensor {name!r}: bool payload holds bytes other than 0 and 1")
    return name, torch.frombuffer(raw, dtype=dtype).reshape(shape), nbytes
