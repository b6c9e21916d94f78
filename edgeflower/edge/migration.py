"""Moving a training session from one edge server to another (FedFly), without pickle.

A session is exported at a consistent point (between batches: no micro-batch of a batch in flight) as one codec
frame of kind ``session_state``: the model spec, split point and optimizer settings in the JSON header, the tail's
state dict (``tail.<key>``) and the optimizer's state tensors (``opt.<param index>.<name>``, e.g. SGD momentum) as
tensors, plus the progress (index of the last completed batch) and the session's metrics. The frame is sealed
with an HMAC-SHA256 under the secret the edge servers share, bound to the migration token
(:mod:`edgeflower.edge.sealing`), so the destination detects any change in transit and a state cannot be replayed
under another token.

The destination accepts a state only with a migration token the ServerApp issued for *it* and for the same
(run, node, round) as the exported session, only once per token (replays are refused), and only if the state
matches the model and split point the device expects.

:class:`MigrationHandlers` are the edge server's three migration RPCs (see :mod:`edgeflower.transport.migration`):
``Migrate`` on the source (export, hand over, free the session on the destination's ack), ``Import`` on the
destination and ``Resume`` (the device finds its session on the destination). A callback, ``on_acked``, observes
every handed-over session right after the destination's ack, before the device is answered.

What a move costs the device, and what was taken out of it (the fixed cost on a fast edge-to-edge link):

* The emulated edge-to-edge link (``peer_link_mbps``) is charged as the offload channel charges its transfers
  (:mod:`edgeflower.transport.emulation`): the exported state is on the wire from the moment it is ready, and the
  real work of moving it (sealing it, encoding the ``Import`` message, the peer channel's connection, gRPC over
  loopback, parsing the message) overlaps with the modelled wire time instead of adding to it, as TLS seals and
  frames its records while earlier ones are on the wire. The destination's own work on the state (unsealing,
  decoding, rebuilding the tail, loading the optimizer) cannot start before the last byte arrives: the destination
  measures it (``import_s`` in its acknowledgement) and the source charges it after the modelled arrival. Before,
  the source slept the whole wire time and only then started the real transfer.
* The seal hashes the state's two halves on two threads: the destination's check takes half the time.
* The destination checks the model's size against its limit once per model spec (a model built on the meta device,
  about 60 % of rebuilding a VGG5 tail), not once per migrated session: the size of a spec never changes.
* The source frees the migrated session at once but does not give its memory back to the OS then (``malloc_trim``
  holds the allocator's locks for about 10 ms in a large process); the next session closed or dropped there does.
* Before a scheduled move the device ends its stream once the last result is in, with an ``end`` frame that
  announces the move: the source exports the session while the device finishes that batch (``export_ahead``); after
  an operator's trigger ``end`` and ``Migrate`` go together. The source waits for the end (:data:`DETACH_WAIT_S`,
  longer while the end is exporting). An export that fails there is logged and left to ``Migrate``.
  The destination reuses the tail of a session that ended there, up to two per model.
* The acknowledgement describes the imported session (what ``Resume`` answers) and the source relays it to the
  device, which continues without asking the destination (one round trip less); the device connects to the
  destination a batch ahead of a scheduled move, else while the source moves the state
  (:func:`edgeflower.device.mobility.migrate_session`).
  ``Resume`` remains for a device whose source died right after the destination's acknowledgement.

Nothing of the checks moved: the seal, the single-use migration token, the owner and fit checks and the size bound
all run as before, on every import.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from logging import INFO, WARNING
from typing import Any

import grpc
import torch
from flwr.common.logger import log

from edgeflower.edge.config import EdgeServerConfig
from edgeflower.edge.ledger import TokenLedger
from edgeflower.edge.registry import SessionRegistry
from edgeflower.edge.sealing import seal, unseal
from edgeflower.edge.session import TrainingSession, check_model_size
from edgeflower.models.splittable import ModelSpec
from edgeflower.transport.auth import RPC_ROLES, TokenClaims, TokenVerifier
from edgeflower.transport.codec import Frame, Limits, decode_frame, encode_frame
from edgeflower.transport.emulation import SYSTEM_CLOCK, Clock, EmulatedLink, LinkProfile, wait_until
from edgeflower.transport.errors import EdgeAuthError, InvalidMessageError, SessionNotFoundError, SessionStateError
from edgeflower.transport.messages import DPParams, OpenRequest, OptimizerSettings, SessionMetrics
from edgeflower.transport.migration import (
    ImportReply,
    ImportRequest,
    MigrateReply,
    MigrateRequest,
    ResumeReply,
    ResumeRequest,
)
from edgeflower.transport.service import METHOD_IMPORT

__all__ = [
    "DETACH_WAIT_S",
    "MigrationAcked",
    "MigrationHandlers",
    "SessionState",
    "check_size_once",
    "export_session",
    "import_session",
    "seal",
    "unseal",
]

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


DETACH_WAIT_S = 2.0
"""Seconds ``Migrate`` waits for the session's training stream to end before refusing with "detach first"."""

MigrationAcked = Callable[[str, str], None]
"""``on_acked(session_id, destination)``: called on the source right after the destination acknowledged a migrated
session (the session is already freed here), before the device is answered."""


class MigrationHandlers:
    """The migration RPCs of one edge server.

    Parameters
    ----------
    registry : SessionRegistry
        The server's open sessions.
    verifier : TokenVerifier
        Checks migration tokens (bound to this server's edge id).
    secret : bytes
        The secret the edge servers share (seals exported states).
    ledger : TokenLedger
        Tokens the server accepted (shared with its ``Open`` handler).
    config : EdgeServerConfig
        Limits, the peers' root certificate and the emulated edge-to-edge link.
    edge_id : str
        This server's id ("" when it has none).
    on_acked : callable, optional
        See :data:`MigrationAcked`; nothing by default.

    Attributes
    ----------
    clock : Clock
        Where the emulated edge-to-edge link reads the time and waits (the system clock; tests set a manual one).
    """

    def __init__(
        self,
        registry: SessionRegistry,
        verifier: TokenVerifier,
        secret: bytes,
        ledger: TokenLedger,
        config: EdgeServerConfig,
        edge_id: str = "",
        on_acked: MigrationAcked | None = None,
    ) -> None:
        self.registry = registry
        self.verifier = verifier
        self.secret = secret
        self.ledger = ledger
        self.config = config
        self.edge_id = edge_id
        self.on_acked = on_acked
        self.limits = Limits(max_message_bytes=config.max_message_bytes)
        self.clock: Clock = SYSTEM_CLOCK

    def export_ahead(self, session: TrainingSession) -> None:
        """Export ``session`` now, as its stream ends before an announced ``Migrate`` (``keep_export``); a session
        that cannot be exported now (e.g. a state over the message limit) is left to ``Migrate``, which says why."""
        with session.lock, session.exporting_ahead():
            try:
                if not session.closed and not session.batch_in_progress:
                    session.keep_export(export_session(session, self.limits))
            except Exception as exc:  # the session trains on or moves as before: this was only a head start
                log(WARNING, "edge server: session %s not exported ahead of its move: %r", session.session_id[:8], exc)

    def migrate(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Source side: export the detached session, hand it to the destination, free it on the ack."""
        req = MigrateRequest.from_frame(decode_frame(request, self.limits))
        session = self.registry.get(req.session_id)
        session.check_owner(req.token)
        t0 = time.perf_counter()
        session.wait_detached(DETACH_WAIT_S)  # its end may still be on its way or exporting (bounded; the owner only)
        with session.lock:
            if session.closed:
                raise SessionNotFoundError(f"session {session.session_id} was closed or expired")
            if session.attached:
                raise SessionStateError(f"session {session.session_id} still has a training stream: detach first")
            state = session.take_export() or export_session(session, self.limits)
        t1 = time.perf_counter()  # the state is ready to go
        export_s = t1 - t0
        ack = self._hand_over(req, state)
        transfer_s = time.perf_counter() - t1
        # Only after the ack. No malloc_trim here (it holds the allocator's locks ~10 ms while the device waits): the
        # tail goes to the next session of its model, and the next session closed or dropped here trims.
        self.registry.drop(session.session_id, f"migrated to {req.destination}", trim=False)
        sid = session.session_id[:8]
        log(INFO, "edge server: session %s migrated to %s (%d bytes)", sid, req.destination, len(state))
        if self.on_acked is not None:
            self.on_acked(session.session_id, req.destination)
        return MigrateReply(ack.session_id, ack.edge_id, len(state), export_s, transfer_s, ack.resume).to_bytes()

    def _hand_over(self, req: MigrateRequest, state: bytes) -> ImportReply:
        """Seal ``state`` and send it to the destination; with an emulated edge-to-edge link, return when the modelled
        link would have delivered it and the destination would have imported it.

        The state is booked on the emulated wire from now (it is exported and ready); the real transfer (sealing,
        framing, the peer channel, gRPC over loopback) overlaps with the modelled wire time, as on a real link where
        TLS seals and frames records while earlier ones are on the wire. The destination's work on the state needs
        its last byte, so its measured duration (``import_s``, at most the real call's duration) is charged after the
        modelled arrival.
        """
        from edgeflower.transport.client import EdgeClient  # the edge server is a client of its peer here

        clock = self.clock
        ready = clock.now()
        mbps = self.config.peer_link_mbps
        link = EmulatedLink(LinkProfile(mbps, mbps), clock)
        arrival = link.book(len(state), True, ready)[1] if mbps > 0 else ready
        mac = seal(state, req.migration_token, self.secret)
        imp = ImportRequest(req.migration_token, mac, state, req.expect_model, req.expect_split_point)
        with EdgeClient(
            req.destination, self.config.peer_root_cert, max_message_bytes=self.limits.max_message_bytes
        ) as peer:
            ack = ImportReply.from_frame(peer.call(METHOD_IMPORT, imp.to_bytes(self.limits), 120.0))
        if mbps > 0:
            wait_until(arrival + min(ack.import_s, clock.now() - ready), clock)
        return ack

    def accept(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Destination side (``Import``): accept a sealed session state under a migration token issued for this
        server.

        The reply says how long that took (``import_s``: from the parsed request to the reply) and describes the
        session for the device (what ``Resume`` answers).
        """
        req = ImportRequest.from_frame(decode_frame(request, self.limits))
        t0 = time.perf_counter()  # parsing the message is the transfer's (it overlaps the emulated wire)
        claims = self.verifier.verify(req.migration_token, roles=RPC_ROLES["edge/Import"])
        ledger = self.ledger
        with ledger.lock:
            ledger.check_round(claims.run_id, claims.server_round)
        with ledger.import_lock:
            if req.migration_token in ledger.imported:
                raise EdgeAuthError("this migration token was already used (replayed migration)")
            if claims.nonce in ledger.nonces:
                raise EdgeAuthError("this migration token was already used to open a session")
            unseal(req.state, req.migration_token, req.mac, self.secret)
            session = import_session(
                secrets.token_hex(16),
                claims,
                req.migration_token,
                req.state,
                self.limits,
                req.expect_model,
                req.expect_split_point,
                self.config.model_params,
            )
            self.registry.add(session)
            ledger.imported[req.migration_token] = session.session_id
        with ledger.lock:
            ledger.seen_round(claims.run_id, claims.server_round)
        log(
            INFO,
            "edge server: imported a migrated session as %s for run %d node %d round %d (after batch %d)",
            session.session_id[:8],
            claims.run_id,
            claims.node_id,
            claims.server_round,
            session.last_batch,
        )
        resume = self._describe(session)
        return ImportReply(session.session_id, self.edge_id, time.perf_counter() - t0, resume).to_bytes()

    def _describe(self, session: TrainingSession) -> ResumeReply:
        sid = session.session_id
        return ResumeReply(sid, self.edge_id, session.input_shape, session.expects_grad, session.last_batch)

    def resume(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Tell the device which session its migration token owns here."""
        req = ResumeRequest.from_frame(decode_frame(request, self.limits))
        self.verifier.verify(req.migration_token, check_expiry=False, roles=RPC_ROLES["edge/Resume"])
        sid = self.ledger.imported.get(req.migration_token)
        if sid is None:
            raise SessionNotFoundError("no session was migrated here with this token")
        session = self.registry.get(sid)
        session.check_owner(req.migration_token)
        return self._describe(session).to_bytes()
