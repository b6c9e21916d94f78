"""A session's state as bytes: what a migration moves from one edge server to another.

:func:`export_session` encodes a :class:`~edgeflower.edge.session.TrainingSession` (tail weights and buffers,
optimizer state, progress, metrics, owner, DP state and noise generator) as one codec frame; :func:`decode_state`
checks such a frame field by field and :func:`import_session` rebuilds a session from it on the destination (its
model size checked once per spec: :func:`check_size_once`). Sealing the bytes and the RPCs that move them live in
:mod:`edgeflower.edge.migration`.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, fields
from typing import Any

import torch

from edgeflower.edge.session import TrainingSession, check_model_size
from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.auth import TokenClaims
from edgeflower.transport.codec import Frame, Limits, decode_frame, encode_frame
from edgeflower.transport.errors import EdgeAuthError, InvalidMessageError, SessionStateError
from edgeflower.transport.messages import DPParams, OpenRequest, OptimizerSettings, SessionMetrics

__all__ = ["SessionState", "check_size_once", "decode_state", "export_session", "import_session"]

_SIZE_CACHE_MAX = 256
_METRIC_FIELDS = tuple(f.name for f in fields(SessionMetrics) if f.name != "duration_s")


@dataclass
class SessionState:
    """A decoded exported session.

    Attributes
    ----------
    spec : ModelSpec
        The whole model.
    split_point : int
        Blocks on the device.
    optimizer : OptimizerSettings
        Server-side optimizer settings.
    tail_state : dict of str to torch.Tensor
        The tail's state dict.
    optimizer_state : dict
        ``torch.optim`` state dict (tensors and JSON-able values).
    last_batch : int
        Index of the last completed batch (``-1`` before the first).
    metrics : dict of str to float
        The session's metrics so far (including the DP-SGD steps the tail took, so epsilon continues).
    owner : tuple of int
        ``(run, node, round)`` of the session.
    dp : DPParams or None
        DP-SGD settings of the tail (``dp = full``); the destination keeps training it privately.
    dp_rng : torch.Tensor or None
        State of the tail's noise generator.
    """

    spec: ModelSpec
    split_point: int
    optimizer: OptimizerSettings
    tail_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    last_batch: int
    metrics: dict[str, float]
    owner: tuple[int, int, int]
    dp: DPParams | None = None
    dp_rng: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of tensors in the state."""
        tensors = list(self.tail_state.values())
        for per_param in self.optimizer_state.get("state", {}).values():
            tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


def export_session(session: TrainingSession, limits: Limits | None = None) -> bytes:
    """Encode ``session`` (call with its lock held) as a ``session_state`` frame.

    Raises
    ------
    SessionStateError
        If a batch is half done (micro-batches of it still to come): migrate between batches.
    """
    if session.batch_in_progress:
        raise SessionStateError(f"session {session.session_id} is in the middle of a batch; migrate between batches")
    private = session.private
    if private is not None:
        private.fill(session.metrics)  # count the DP steps taken here before they travel
    opt_sd = session.optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {f"tail.{k}": v.detach() for k, v in session.tail.state_dict().items()}
    if private is not None:
        tensors["dp.rng"] = private.generator.get_state()  # the noise stream continues where it stopped
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in opt_sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value.detach()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    group = opt_sd["param_groups"][0]
    meta = {
        "model": session.spec.to_dict(),
        "split_point": session.split_point,
        "optimizer": {"lr": group["lr"], "momentum": group["momentum"], "weight_decay": group["weight_decay"]},
        "param_groups": opt_sd["param_groups"],
        "opt_scalars": scalars,
        "last_batch": session.last_batch,
        "metrics": {f: float(getattr(session.metrics, f)) for f in _METRIC_FIELDS},
        "owner": list(session.claims.owner),
        "dp": None if private is None else private.params.to_dict(),
    }
    return encode_frame("session_state", meta, tensors, limits)


def decode_state(frame: Frame) -> SessionState:
    """Parse and validate a ``session_state`` frame."""
    if frame.kind != "session_state":
        raise InvalidMessageError(f"expected a 'session_state' frame, got {frame.kind!r}")
    meta = frame.meta
    try:
        spec = ModelSpec.from_dict(meta["model"])
        split_point = int(meta["split_point"])
        optimizer = OptimizerSettings.from_dict(meta["optimizer"])
        owner = tuple(int(v) for v in meta["owner"])
        last_batch = int(meta["last_batch"])
        metrics = {str(k): float(v) for k, v in dict(meta["metrics"]).items()}
        groups = list(meta["param_groups"])
        scalars = dict(meta.get("opt_scalars", {}))
        dp = None if meta.get("dp") is None else DPParams.from_dict(meta["dp"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidMessageError(f"malformed session state: {exc}") from exc
    if len(owner) != 3:
        raise InvalidMessageError("malformed session state: owner must be (run, node, round)")
    tail = {k[len("tail.") :]: v for k, v in frame.tensors.items() if k.startswith("tail.")}
    state: dict[int, dict[str, Any]] = {}
    for key, value in frame.tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in scalars.items():
        state.setdefault(int(idx), {}).update(values)
    return SessionState(
        spec,
        split_point,
        optimizer,
        tail,
        {"state": state, "param_groups": groups},
        last_batch,
        metrics,
        (owner[0], owner[1], owner[2]),
        dp,
        frame.tensors.get("dp.rng"),
    )


_sizes: dict[str, int] = {}  # canonical model spec -> elements of its state dict (the specs that fitted a limit)
_sizes_lock = threading.Lock()


def check_size_once(spec: ModelSpec, max_params: int | None) -> None:
    """:func:`~edgeflower.edge.session.check_model_size`, remembering the size of every spec that was built.

    A spec's size never changes, so the model is built on the meta device once per spec and process (the bound is
    still checked on every call; an oversized or unbuildable spec is never remembered and fails every time).

    Raises
    ------
    InvalidMessageError
        If the model is too large or cannot be built.
    """
    if max_params is None:
        return
    key = json.dumps(spec.to_dict(), sort_keys=True)
    with _sizes_lock:
        known = _sizes.get(key)
    if known is not None and known <= max_params and math.prod(spec.in_shape) <= max_params:
        return
    size = check_model_size(spec, max_params)  # raises when over the limit
    with _sizes_lock:
        if len(_sizes) >= _SIZE_CACHE_MAX:
            _sizes.clear()
        _sizes[key] = size


def import_session(
    session_id: str,
    claims: TokenClaims,
    token: str,
    state_frame: bytes,
    limits: Limits,
    expect_spec: ModelSpec | None = None,
    expect_split_point: int | None = None,
    max_params: int | None = None,
) -> TrainingSession:
    """Rebuild a :class:`TrainingSession` from an exported state (already unsealed).

    Parameters
    ----------
    session_id : str
        The new session's id.
    claims, token
        The verified migration token and its claims; the session will belong to it.
    state_frame : bytes
        What :func:`export_session` produced.
    limits : Limits
        Decoding limits.
    expect_spec, expect_split_point : optional
        The model and split point the device expects; a state that differs is refused.
    max_params : int, optional
        Largest model the destination builds (checked before anything is allocated).

    Raises
    ------
    EdgeAuthError
        If the state belongs to another (run, node, round) than the token.
    InvalidMessageError
        If the state is malformed or does not match the expected model or split point.
    """
    st = decode_state(decode_frame(state_frame, limits))
    if st.owner != claims.owner:
        raise EdgeAuthError(f"migrated session belongs to {st.owner}, the migration token to {claims.owner}")
    if expect_spec is not None and st.spec != expect_spec:
        raise InvalidMessageError(
            f"migrated session is for model {json.dumps(st.spec.to_dict())}, expected "
            f"{json.dumps(expect_spec.to_dict())}"
        )
    if expect_split_point is not None and st.split_point != expect_split_point:
        raise InvalidMessageError(f"migrated session has split point {st.split_point}, expected {expect_split_point}")
    check_size_once(st.spec, max_params)
    request = OpenRequest(token, st.spec, st.split_point, st.optimizer, st.tail_state, dp=st.dp)
    session = TrainingSession(session_id, claims, token, request)  # its size was checked just above
    if session.private is not None and st.dp_rng is not None:
        try:
            session.private.generator.set_state(st.dp_rng)
        except RuntimeError as exc:
            raise InvalidMessageError(f"migrated noise generator state is invalid: {exc}") from exc
    try:
        session.optimizer.load_state_dict(st.optimizer_state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InvalidMessageError(f"migrated optimizer state does not fit the tail: {exc}") from exc
    types = {f.name: f.type for f in fields(SessionMetrics)}
    carried = {k: (int if types[k] in (int, "int") else float)(st.metrics.get(k, 0)) for k in _METRIC_FIELDS}
    session.resume_after(st.last_batch, SessionMetrics(**carried))
    return session
