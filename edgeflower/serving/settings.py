"""The serving controller's timing and limits, shared by its parts (deploy, detection, routing, service)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from edgeflower.transport.auth import MAX_LIFETIME_S
from edgeflower.transport.codec import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["ControllerConfig"]


@dataclass(frozen=True)
class ControllerConfig:
    """Timing and limits of the controller.

    Attributes
    ----------
    heartbeat_s : float
        Interval between heartbeats to every live node.
    heartbeat_timeout_s : float
        Deadline of one heartbeat.
    misses : int
        Consecutive missed heartbeats that declare a node dead.
    forward_timeout_s : float
        Deadline of one stage.
    request_deadline_s : float
        A request that finds no working route within this long fails with ``UNAVAILABLE``.
    max_batch : int
        Largest batch in one predict request.
    workers : int
        gRPC worker threads of the predict service.
    max_message_bytes : int
        Largest message.
    latency_window : int
        Relayed forwards per node the latency model learns from (the most recent ones).
    latency_trim : float
        Share of those forwards dropped at each end before averaging the node's speed and overhead.
    token_ttl_s : float
        Lifetime of the controller's node tokens (renewed when half of it is left).
    readmit_every : int
        A dead node is pinged every this many heartbeats; one that answers is re-admitted and the controller
        re-plans its route.
    insecure : bool
        Allow the predict service plaintext on a non-loopback address (with a WARNING).
    first_message_s : float
        A call must deliver its request within this long (half-open calls are answered ``DEADLINE_EXCEEDED``).

    Raises
    ------
    ValueError
        For a duration or count that is not a finite positive number, a ``latency_trim`` outside ``[0, 0.5)`` or a
        token lifetime over the hour every verifier accepts.
    """

    heartbeat_s: float = 0.2
    heartbeat_timeout_s: float = 0.5
    misses: int = 2
    forward_timeout_s: float = 10.0
    request_deadline_s: float = 30.0
    max_batch: int = 1024
    workers: int = 16
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    latency_window: int = 64
    latency_trim: float = 0.25
    token_ttl_s: float = 300.0
    readmit_every: int = 5
    insecure: bool = False
    first_message_s: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("insecure", "latency_trim"):
                continue
            if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"ControllerConfig.{f.name} must be a finite positive number, got {value!r}")
        if not 0 <= self.latency_trim < 0.5:
            raise ValueError(f"ControllerConfig.latency_trim must be in [0, 0.5), got {self.latency_trim!r}")
        if self.token_ttl_s > MAX_LIFETIME_S:
            raise ValueError(f"ControllerConfig.token_ttl_s must be at most {MAX_LIFETIME_S:g} s (what verifiers take)")
