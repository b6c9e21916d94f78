"""Exactly-once answers: every request id is computed once and answered with the same reply however often it is
sent, also across controller restarts.

Every request carries a client-chosen id. It is journalled as accepted before it runs and as answered (with the
whole reply) before the reply leaves (:class:`~edgeflower.serving.journal.Journal`). A duplicate of a request in
flight waits for the first one; a request already answered is replayed from the journal; a request accepted before
a restart but never answered is run again and flagged ``recovered``. An id reused for a different input is refused,
also while the first request is still in flight.

Request ids are scoped by client: the ``Predict`` RPC passes the client token's node id, and the journal keeps
``"<client>/<request id>"`` (:func:`journal_key`), so one client can neither collide with nor learn another's ids.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future

import torch

from edgeflower.serving.journal import Journal
from edgeflower.serving.plan import Route
from edgeflower.serving.protocol import check_request_id
from edgeflower.transport.codec import Limits, decode_frame, encode_frame
from edgeflower.transport.errors import InvalidMessageError

__all__ = ["ExactlyOnce", "input_digest", "journal_key"]


def input_digest(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (what ties a request id to its input)."""
    return hashlib.sha256(x.contiguous().view(torch.uint8).numpy().tobytes() if x.numel() else b"").hexdigest()


def journal_key(client: int | None, request_id: str) -> str:
    """The journal's key of ``request_id`` sent by ``client`` (``None``: the id itself, for in-process callers);
    ``/`` is never part of a request id, so keys of different clients never collide."""
    return request_id if client is None else f"{client}/{request_id}"


class ExactlyOnce:
    """Answer every request id exactly once, journalled.

    Parameters
    ----------
    journal : Journal
        Accepted and answered requests (replayed after a restart).
    run : callable
        ``run(request_id, x) -> (logits, route)``: computes a request (retrying on broken routes).
    limits : Limits
        Limits of the reply frames.
    wait_s : float
        How long a duplicate waits for the request in flight with its id.

    Attributes
    ----------
    executed : int
        Requests computed by this process (replays not counted).
    """

    def __init__(
        self,
        journal: Journal,
        run: Callable[[str, torch.Tensor], tuple[torch.Tensor, Route]],
        limits: Limits,
        wait_s: float,
    ) -> None:
        self.journal = journal
        self.run = run
        self.limits = limits
        self.wait_s = wait_s
        self.executed = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[str, Future[bytes]]] = {}  # key -> (input digest, the answer to come)

    def handle(self, request_id: str, x: torch.Tensor, client: int | None = None) -> bytes:
        """Answer request ``request_id`` of ``client`` exactly once (journalled); return the ``prediction`` frame.

        Raises
        ------
        InvalidMessageError
            For an invalid request id, or an id already used (or in flight) for a different input.
        EdgeError
            What computing the request raised (a duplicate waiting for it raises the same).
        """
        check_request_id(request_id)
        key = journal_key(client, request_id)
        sha = input_digest(x)
        with self._lock:
            replay = self._replay(key, request_id, sha)
            if replay is not None:
                return replay
            entry = self._inflight.get(key)
            owner = entry is None
            if entry is None:
                fut: Future[bytes] = Future()
                self._inflight[key] = (sha, fut)
            elif entry[0] != sha:
                raise InvalidMessageError(f"request id {request_id!r} is in flight for a different input")
            else:
                fut = entry[1]
        if not owner:
            return fut.result(self.wait_s)
        try:
            reply = self._execute(key, request_id, x, sha)
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        else:
            fut.set_result(reply)
            return reply
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _replay(self, key: str, request_id: str, sha: str) -> bytes | None:
        """The journalled reply to ``key`` flagged ``replayed``, or ``None`` if it was not answered yet."""
        known = self.journal.accepted.get(key)
        if known is not None and known != sha:
            raise InvalidMessageError(f"request id {request_id!r} was already used for a different input")
        cached = self.journal.answers.get(key)
        if cached is None:
            return None
        frame = decode_frame(cached, self.limits)
        return encode_frame(frame.kind, {**frame.meta, "replayed": True}, frame.tensors)

    def _execute(self, key: str, request_id: str, x: torch.Tensor, sha: str) -> bytes:
        """Journal ``key`` as accepted (unless it was before a restart), compute it, journal the reply."""
        recovered = key in self.journal.accepted
        if not recovered:
            self.journal.accept(key, sha)
        logits, route = self.run(request_id, x)
        self.executed += 1
        meta = {
            "request_id": request_id,
            "technique": route.technique,
            "route_version": route.version,
            "replayed": False,
            "recovered": recovered,
        }
        reply = encode_frame("prediction", meta, {"logits": logits}, self.limits)
        self.journal.answer(key, reply)
        return reply
