"""The limits and timeouts of an edge server (:class:`EdgeServerConfig`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["EdgeServerConfig"]


@dataclass(frozen=True)
class EdgeServerConfig:
    """Limits and timeouts of an edge server.

    Attributes
    ----------
    max_message_bytes : int
        Largest message accepted or sent (gRPC's limit and the codec's).
    max_sessions : int
        Most sessions open at once.
    max_workers : int or None
        Worker threads of the data lane (requests being worked on: opens, steps, closes, migrations); default 16.
        An idle training stream holds none. A data call that finds them all busy for ``admission_wait_s`` is
        refused with ``RESOURCE_EXHAUSTED``; training steps wait for a worker instead.
    max_sessions_per_node : int
        Most sessions one device node (of one run) holds at once.
    max_model_params : int or None
        Largest model (parameters and buffers) a session may build, checked on the meta device before anything is
        allocated; default: what fits in one message (``max_message_bytes // 4``). An in-process pool sets it to
        what the run's model needs.
    max_open_bytes : int or None
        Largest ``Open`` message; default ``4 * max_model_params`` plus 1 MiB of header. An ``Import`` carries four
        times an ``Open``'s weights (tail, momentum, round-start weights, progress): ``4 * max_open_bytes`` plus
        1 MiB. Both at most ``max_message_bytes``.
    first_message_s : float
        A call must deliver its request within this long (a half-open call is answered ``DEADLINE_EXCEEDED``).
    admission_wait_s : float
        How long a data call waits for a free worker before ``RESOURCE_EXHAUSTED``.
    max_waiting_bytes : int
        Request bytes that unary data calls (``Open``, ``Close``, ``Migrate``, ``Import``, ...) waiting for a worker
        may hold together; a call past it is refused with ``RESOURCE_EXHAUSTED`` at once (a device retries a busy
        ``Open`` with backoff), one waiting alone may be over it. Training steps wait without counting.
    stream_idle_s : float or None
        A training stream without a message for this long is ended (its session dropped); default
        ``idle_timeout_s``. A stream whose session was reaped ends within about a second.
    insecure : bool
        Allow plaintext on a non-loopback address (logs a WARNING); without it such an address needs ``tls``.
    idle_timeout_s : float
        A session without activity for this long is dropped.
    reap_interval_s : float or None
        How often to look for idle sessions; default ``min(idle_timeout_s / 4, 10)``.
    stop_grace_s : float
        Seconds in-flight RPCs get to finish when the server stops.
    peer_root_cert : bytes or None
        PEM root certificate for edge-to-edge calls (migration) to TLS-serving peers; plaintext when ``None``.
    peer_link_mbps : float
        Emulated edge-to-edge bandwidth for migrations in Mbit/s (0 = unlimited, i.e. the real network only).
    peers : mapping of str to str, optional
        Edge id -> ``host:port`` of the edge servers this one may migrate sessions to. A ``Migrate`` then goes to
        the address of the peer its migration token names, whatever address the device gave, and a token naming no
        peer is refused. ``None``: the destination the device names is dialled (no allowlist). In-process pools
        set it (:meth:`~edgeflower.edge.server.EdgeServer.set_peers`); ``edgeflower edge-server --peer``.
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_sessions: int = 64
    max_workers: int | None = None
    max_sessions_per_node: int = 2
    max_model_params: int | None = None
    max_open_bytes: int | None = None
    first_message_s: float = 5.0
    admission_wait_s: float = 2.0
    max_waiting_bytes: int = 256 * 2**20
    stream_idle_s: float | None = None
    insecure: bool = False
    idle_timeout_s: float = 300.0
    reap_interval_s: float | None = None
    stop_grace_s: float = 1.0
    peer_root_cert: bytes | None = None
    peer_link_mbps: float = 0.0
    peers: Mapping[str, str] | None = None

    @property
    def workers(self) -> int:
        """The effective number of data-lane worker threads."""
        return self.max_workers or 16

    @property
    def model_params(self) -> int:
        """The effective model size limit (parameters and buffers)."""
        return self.max_model_params or self.max_message_bytes // 4

    @property
    def open_bytes(self) -> int:
        """The effective size limit of ``Open`` messages (the tail's float32 weights and a header)."""
        limit = self.max_open_bytes or 4 * self.model_params + (1 << 20)
        return min(limit, self.max_message_bytes)

    @property
    def import_bytes(self) -> int:
        """The effective size limit of ``Import`` messages: a migrated session carries the tail's weights, its
        optimizer's momentum, the round-start weights of a proximal term and its progress, so four times an
        ``Open``'s weights plus a header."""
        limit = 4 * (self.max_open_bytes or 4 * self.model_params) + (1 << 20)
        return min(limit, self.max_message_bytes)

    @property
    def stream_idle(self) -> float:
        """The effective idle deadline of a training stream."""
        return self.stream_idle_s or self.idle_timeout_s

    @property
    def reap_interval(self) -> float:
        """The effective reaper interval."""
        return self.reap_interval_s or min(self.idle_timeout_s / 4, 10.0)
