"""The attacks of the security model (issue 15), as a hostile client on loopback would run them.

Shared by ``tests/security`` (a bounded selection, in-process services) and ``benchmarks/security.py`` (all of them,
against processes). Every attack returns an :class:`Outcome`: whether the service rejected it the way the security
model says it must (the expected gRPC status), and what it answered.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import struct
import time
from collections.abc import Callable

import grpc
import torch

from benchmarks._flood import HalfOpenFlood, Outcome, _ident
from edgeflower.models.zoo import build_model
from edgeflower.transport.auth import TokenIssuer
from edgeflower.transport.codec import MAGIC
from edgeflower.transport.messages import OpenRequest, OptimizerSettings, StepRequest
from edgeflower.transport.service import METHOD_HEALTH, METHOD_IMPORT, METHOD_OPEN, METHOD_TRAIN, SESSION_KEY, TOKEN_KEY

__all__ = [
    "DEPLOY",
    "FORWARD",
    "PING",
    "PREDICT",
    "HalfOpenFlood",
    "Outcome",
    "deep_json_frame",
    "open_frame",
    "raw_call",
    "stride_overflow_frame",
]

OK = grpc.StatusCode.OK
DEPLOY = "/edgeflower.Inference/Deploy"
FORWARD = "/edgeflower.Inference/Forward"
PING = "/edgeflower.Inference/Ping"
PREDICT = "/edgeflower.Serving/Predict"
OPTIM = OptimizerSettings(lr=0.05, momentum=0.9)
_BIG = 256 * 1024 * 1024


def raw_call(address: str, method: str, frame: bytes, timeout_s: float = 10.0, metadata=None) -> tuple:
    """Call a unary method with raw bytes; ``(status, detail, reply)``."""
    opts = [("grpc.max_send_message_length", _BIG), ("grpc.max_receive_message_length", _BIG)]
    with grpc.insecure_channel(address, options=opts) as ch:
        stub = ch.unary_unary(method, request_serializer=_ident, response_deserializer=_ident)
        try:
            reply = stub(frame, timeout=timeout_s, metadata=metadata)
            return OK, "", reply
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", None


def attempt(name: str, expected: grpc.StatusCode, address: str, method: str, frame: bytes, **kw) -> Outcome:
    """One raw call, as an :class:`Outcome`."""
    code, detail, _ = raw_call(address, method, frame, **kw)
    return Outcome(name, expected, code, detail[:160])


def _prefix(header: bytes) -> bytes:
    return struct.pack("<4sB3sI", MAGIC, 1, b"\0\0\0", len(header)) + header


def stride_overflow_frame(kind: str = "open") -> bytes:
    """A zero-size tensor whose other dimensions overflow a stride (used to crash the decoder: ``INTERNAL``)."""
    spec = {"name": "x", "dtype": "float32", "shape": [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]}
    return _prefix(json.dumps({"kind": kind, "meta": {}, "tensors": [spec]}).encode())


def deep_json_frame(kind: str = "open", depth: int = 100_000) -> bytes:
    """A header nested ``depth`` levels deep (used to blow the JSON parser's recursion: ``INTERNAL``)."""
    return _prefix(b'{"kind":"' + kind.encode() + b'","meta":' + b"[" * depth + b"]" * depth + b',"tensors":[]}')


def pickle_frame() -> bytes:
    """A pickle where a frame belongs (never unpickled: refused as malformed)."""
    return pickle.dumps({"kind": "open", "__reduce__": "os.system"})


def unlisted_dtype_frame(kind: str = "open") -> bytes:
    """A tensor of a dtype outside the whitelist."""
    spec = {"name": "x", "dtype": "complex128", "shape": [1]}
    return _prefix(json.dumps({"kind": kind, "meta": {}, "tensors": [spec]}).encode()) + b"\0" * 16


def open_frame(token: str, name: str = "vgg5", k: int = 2, with_state: bool = True, **options) -> bytes:
    """An ``Open`` for ``name`` (with its real tail state, or none: a tiny message describing a big model)."""
    with torch.device("meta") if not with_state else contextlib.nullcontext():
        model = build_model(name, **options)
    tail = model.split(k)[1].state_dict() if with_state else {}
    return OpenRequest(token, model.spec, k, OPTIM, dict(tail)).to_bytes()


def nan_step(session_id: str, token: str, address: str, shape: tuple[int, ...], n: int = 4) -> Outcome:
    """A step whose activations hold NaN, on the attacker's own session."""
    act = torch.full((n, *shape), float("nan"))
    frame = StepRequest(act, torch.zeros(n, dtype=torch.long), batch=0, batch_size=n).to_bytes()
    with grpc.insecure_channel(address) as ch:
        call = ch.stream_stream(METHOD_TRAIN, request_serializer=_ident, response_deserializer=_ident)
        try:
            list(call(iter([frame]), metadata=((SESSION_KEY, session_id), (TOKEN_KEY, token)), timeout=20))
            return Outcome("nan-activations", grpc.StatusCode.INVALID_ARGUMENT, OK)
        except grpc.RpcError as exc:
            return Outcome("nan-activations", grpc.StatusCode.INVALID_ARGUMENT, exc.code(), exc.details() or "")


def foreign_stream(address: str, session_id: str, token: str) -> Outcome:
    """A training stream on someone else's session (with a token that does not own it)."""
    with grpc.insecure_channel(address) as ch:
        call = ch.stream_stream(METHOD_TRAIN, request_serializer=_ident, response_deserializer=_ident)
        try:
            list(call(iter([]), metadata=((SESSION_KEY, session_id), (TOKEN_KEY, token)), timeout=20))
            return Outcome("foreign-session-stream", grpc.StatusCode.PERMISSION_DENIED, OK)
        except grpc.RpcError as exc:
            return Outcome("foreign-session-stream", grpc.StatusCode.PERMISSION_DENIED, exc.code(), exc.details() or "")


def served_within(fn: Callable[[], object], bound_s: float = 2.0) -> bool:
    """Whether ``fn()`` succeeded within ``bound_s`` seconds (for availability figures; never asserted in tests)."""
    t0 = time.monotonic()
    try:
        fn()
    except Exception:
        return False
    return time.monotonic() - t0 <= bound_s


def _small_open(token: str) -> bytes:
    return open_frame(token, width=0.25)


def edge_token_attacks(address: str, secret: bytes, edge_id: str | None, other_secret: bytes) -> list[Outcome]:
    """Token attacks on an edge server's ``Open`` and ``Import``."""
    issuer, forger = TokenIssuer(secret), TokenIssuer(other_secret)
    pd, inv = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT
    out = [
        attempt("edge-forged-token", pd, address, METHOD_OPEN, _small_open(forger.issue(9, 1, 1, edge_id))),
        attempt("edge-expired-token", pd, address, METHOD_OPEN, _small_open(issuer.issue(9, 1, 1, edge_id, ttl_s=-1))),
        attempt("edge-foreign-edge-token", pd, address, METHOD_OPEN, _small_open(issuer.issue(9, 1, 1, "elsewhere"))),
        attempt(
            "edge-10-year-token",
            pd,
            address,
            METHOD_OPEN,
            _small_open(issuer.issue(9, 1, 1, edge_id, ttl_s=10 * 365 * 86400)),
        ),
    ]
    for role in ("client", "controller"):
        token = issuer.issue(9, 1, 1, edge_id, role=role)
        out.append(attempt(f"edge-open-with-{role}-token", pd, address, METHOD_OPEN, _small_open(token)))
    from edgeflower.transport.migration import ImportRequest

    device = issuer.issue(9, 1, 1, edge_id)
    imp = ImportRequest(device, "00" * 32, b"x").to_bytes()
    out.append(attempt("edge-import-with-device-token", pd, address, METHOD_IMPORT, imp))
    out.append(attempt("edge-pickle-payload", inv, address, METHOD_OPEN, pickle_frame()))
    out.append(attempt("edge-unlisted-dtype", inv, address, METHOD_OPEN, unlisted_dtype_frame()))
    out.append(attempt("edge-stride-overflow", inv, address, METHOD_OPEN, stride_overflow_frame()))
    out.append(attempt("edge-deep-json", inv, address, METHOD_OPEN, deep_json_frame()))
    out.append(attempt("edge-health-garbage", inv, address, METHOD_HEALTH, b"\x00" * 32))
    return out
