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

import secrets
import time
from collections.abc import Callable
from logging import INFO, WARNING

import grpc
from flwr.common.logger import log

from edgeflower.edge.config import EdgeServerConfig
from edgeflower.edge.ledger import TokenLedger
from edgeflower.edge.registry import SessionRegistry
from edgeflower.edge.sealing import seal, unseal
from edgeflower.edge.session import TrainingSession
from edgeflower.edge.session_state import SessionState, check_size_once, export_session, import_session
from edgeflower.transport.auth import ROLE_MIGRATION, RPC_ROLES, TokenVerifier
from edgeflower.transport.codec import Limits, decode_frame, decode_header
from edgeflower.transport.emulation import SYSTEM_CLOCK, Clock, EmulatedLink, LinkProfile, wait_until
from edgeflower.transport.errors import EdgeAuthError, EdgeUnavailableError, SessionNotFoundError, SessionStateError
from edgeflower.transport.fields import expect_kind, str_field
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
    peers : dict of str to str, or None
        The allowlist of migration destinations, edge id -> address (from ``config.peers``; see
        :class:`~edgeflower.edge.config.EdgeServerConfig`).
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
        self.peers: dict[str, str] | None = None if config.peers is None else dict(config.peers)

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
        session.check_owner(req.token, self.verifier.clock())
        moving = self.verifier.verify(req.migration_token, roles=ROLE_MIGRATION, any_edge=True)  # fails here, not
        if (moving.run_id, moving.node_id) != (session.claims.run_id, session.claims.node_id):  # on the destination
            raise EdgeAuthError(
                f"the migration token belongs to run {moving.run_id} node {moving.node_id}, not to the session's owner"
            )
        destination = self._destination(req.destination, moving.edge_id)
        t0 = time.perf_counter()
        session.wait_detached(DETACH_WAIT_S)  # its end may still be on its way or exporting (bounded; the owner only)
        with session.lock:
            if session.closed:
                raise SessionNotFoundError(f"session {session.session_id} was closed or expired")
            if session.attached:
                raise SessionStateError(f"session {session.session_id} still has a training stream: detach first")
            if session.moving:
                raise SessionStateError(f"session {session.session_id} is already being migrated")
            state = session.take_export() or export_session(session, self.limits)
            session.moving = True  # one move at a time: a second Migrate cannot hold another worker on the peer
        t1 = time.perf_counter()  # the state is ready to go
        export_s = t1 - t0
        try:
            ack = self._hand_over(req, destination, state)
        finally:
            session.moving = False
        transfer_s = time.perf_counter() - t1
        # Only after the ack. No malloc_trim here (it holds the allocator's locks ~10 ms while the device waits): the
        # tail goes to the next session of its model, and the next session closed or dropped here trims.
        self.registry.drop(session.session_id, f"migrated to {destination}", trim=False)
        sid = session.session_id[:8]
        log(INFO, "edge server: session %s migrated to %s (%d bytes)", sid, destination, len(state))
        if self.on_acked is not None:
            self.on_acked(session.session_id, destination)
        return MigrateReply(ack.session_id, ack.edge_id, len(state), export_s, transfer_s, ack.resume).to_bytes()

    def _destination(self, named: str, edge_id: str | None) -> str:
        """The address a ``Migrate`` dials: with :attr:`peers`, that of the peer the migration token names (not
        ``named``, the device's address for it); without, ``named``."""
        peers = self.peers  # one read: set_peers may replace it meanwhile
        if peers is None:
            return named
        if edge_id is None:
            raise EdgeAuthError("this edge server migrates only to its peers: the migration token names no edge server")
        address = peers.get(edge_id)
        if address is None:
            raise EdgeAuthError(f"the migration token names edge server {edge_id!r:.80}: not a peer of this one")
        return address

    def _hand_over(self, req: MigrateRequest, destination: str, state: bytes) -> ImportReply:
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
            destination, self.config.peer_root_cert, max_message_bytes=self.limits.max_message_bytes
        ) as peer:
            try:
                ack = ImportReply.from_frame(peer.call(METHOD_IMPORT, imp.to_bytes(self.limits), 120.0))
            except EdgeUnavailableError:  # one answer however it failed: no port scanning through this server
                raise EdgeUnavailableError(f"{_named(req, destination)} did not answer") from None
        if mbps > 0:
            wait_until(arrival + min(ack.import_s, clock.now() - ready), clock)
        return ack

    def accept(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Destination side (``Import``): accept a sealed session state under a migration token issued for this
        server.

        The reply says how long that took (``import_s``: from the parsed request to the reply) and describes the
        session for the device (what ``Resume`` answers).
        """
        token = str_field(expect_kind(decode_header(request, self.limits), "import").meta, "migration_token")
        claims = self.verifier.verify(token, roles=RPC_ROLES["edge/Import"])  # before the state is read and copied
        req = ImportRequest.from_frame(decode_frame(request, self.limits))
        t0 = time.perf_counter()  # parsing the message is the transfer's (it overlaps the emulated wire)
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
        self.verifier.verify(req.migration_token, roles=RPC_ROLES["edge/Resume"])
        sid = self.ledger.imported.get(req.migration_token)
        if sid is None:
            raise SessionNotFoundError("no session was migrated here with this token")
        session = self.registry.get(sid)
        session.check_owner(req.migration_token, self.verifier.clock())
        return self._describe(session).to_bytes()


def _named(req: MigrateRequest, destination: str) -> str:
    """The destination as the device may see it: the address it named, never a peer's address it did not know."""
    if destination == req.destination:
        return f"destination {destination!r:.80}"
    return "the peer the migration token names"
