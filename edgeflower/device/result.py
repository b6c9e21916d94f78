"""What a split-training pass produces (:class:`SplitResult`) and how it fails: which edge-server errors are
transient (the device may finish the round locally) and which are permanent (:class:`OffloadError` fails the node).
See :mod:`edgeflower.device.split` for the fallback itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeflower.timeline import Timeline
from edgeflower.transport.errors import (
    EdgeOverloadedError,
    EdgeTimeoutError,
    EdgeUnavailableError,
    MessageTooLargeError,
    SessionNotFoundError,
)

__all__ = [
    "FALLBACK_MODES",
    "OffloadError",
    "SplitResult",
    "describe_failure",
    "fallback_cause",
    "is_transient",
]

FALLBACK_MODES = ("transient", "never")
"""Run-config ``fallback``: train locally after a transient edge failure, or ``never`` (the node fails instead)."""


class OffloadError(RuntimeError):
    """A node's split training failed for good: the ClientApp raises it and Flower counts the node as failed.

    The message carries the edge server's own message (and, for a message over a size limit, the option to raise).
    """


def is_transient(exc: BaseException) -> bool:
    """Whether an offload error is a transient fault a device may answer by training locally.

    Transient: the edge server is unreachable or went away (``UNAVAILABLE``, ``CANCELLED``: killed, network down),
    did not answer in time (``DEADLINE_EXCEEDED``), refuses more sessions for now (overloaded), or no longer has
    the session (``NOT_FOUND``: it restarted, or reaped the session as idle, since the device opened it). A lost
    session is the same fault as a dead edge server that came back: the device rebuilds the tail from its replay
    log. Everything else is permanent: an unknown model or a spec mismatch, a message over a size limit, a bad or
    foreign token, a refused request, a protocol or server bug.
    """
    if isinstance(exc, MessageTooLargeError):
        return False
    return isinstance(exc, (EdgeUnavailableError, EdgeOverloadedError, SessionNotFoundError))


def fallback_cause(exc: BaseException) -> str:
    """A few words on a transient fault for the round summary: ``unreachable``, ``timed out``, ``overloaded`` or
    ``session lost``."""
    if isinstance(exc, EdgeTimeoutError):
        return "timed out"
    if isinstance(exc, SessionNotFoundError):
        return "session lost"
    if isinstance(exc, EdgeOverloadedError):
        return "overloaded"
    return "unreachable"


def describe_failure(exc: BaseException, fallback: str = "transient") -> str:
    """The message of the :class:`OffloadError` that fails a node: the edge server's message, plus a hint."""
    text = str(exc)
    if isinstance(exc, MessageTooLargeError):
        text += (
            "; raise the run-config option max-message-mb (nodes and in-process edge servers use it; an external "
            "edge server takes `edgeflower edge-server --max-message-mb`)"
        )
    if is_transient(exc):
        return f"split training failed (fallback = {fallback!r}: no local training): {text}"
    return f"split training failed: {text}"


@dataclass
class SplitResult:
    """What one split-training pass produced.

    Attributes
    ----------
    num_examples : int
        Samples trained on.
    loss : float
        Mean training loss.
    seconds : float
        Wall-clock time of the pass.
    fell_back : bool
        Whether the edge server failed and the device finished locally.
    fallback_batch : int
        Index of the first batch trained locally (``-1`` when it did not fall back).
    fallback_reason : str
        The error that caused the fallback.
    timeline : Timeline
        Every phase of every batch.
    server_metrics : dict
        The edge session's metrics (empty after a fallback).
    traffic : dict
        ``uplink-bytes``, ``downlink-bytes`` sent over the (emulated) link, ``batches`` and ``micro-batches``.
    replayed_batches : int
        Batches of the dead edge server's tail training replayed on the device after a fallback.
    fallback_cause : str
        A few words on why it fell back (see :func:`fallback_cause`; empty when it did not).
    """

    num_examples: int
    loss: float
    seconds: float
    fell_back: bool
    fallback_batch: int
    fallback_reason: str
    timeline: Timeline
    server_metrics: dict[str, float] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    replayed_batches: int = 0
    fallback_cause: str = ""

    def metrics(self) -> dict[str, float | int]:
        """Flat metrics for a Flower ``MetricRecord`` (hyphenated keys)."""
        out: dict[str, float | int] = {
            "num-examples": self.num_examples,
            "train-loss": self.loss,
            "train-time-s": self.seconds,
            "fell-back": int(self.fell_back),
            "fallback-batch": self.fallback_batch,
            "fallback-replayed-batches": self.replayed_batches,
        }
        out.update(self.timeline.totals())
        out.update(self.traffic)
        return out
