"""What an edge server remembers about the tokens it accepted: single-use ``Open`` tokens, migration tokens that
imported a session, and the newest round of each run (see :mod:`edgeflower.edge.server` for the round guarantee).

The ``Open`` handler and the migration handlers (:mod:`edgeflower.edge.migration`) share one
:class:`TokenLedger`: an ``Open`` token cannot import a session, a migration token cannot open one, and a token of a
round older than the newest one seen is refused by both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgeflower.transport.errors import SessionStateError

__all__ = ["NonceUse", "TokenLedger"]


@dataclass
class NonceUse:
    """An ``Open`` token that was used: until when to remember it, the request's digest and what it opened."""

    expires_at: float
    digest: bytes
    session_id: str | None = None
    reply: bytes | None = None


class TokenLedger:
    """The tokens an edge server has accepted.

    Parameters
    ----------
    clock : callable, optional
        Seconds since the epoch; the same clock as the server's token verifier, so that a used token is
        remembered at least until the verifier refuses it as expired (tests move it).

    Attributes
    ----------
    lock : threading.Lock
        Guards :attr:`nonces` and :attr:`rounds` (hold it around the ``check_*`` and ``seen_*`` calls).
    import_lock : threading.Lock
        Guards :attr:`imported`.
    nonces : dict of str to NonceUse
        ``Open`` tokens used (single-use), until they expire.
    imported : dict of str to str
        Migration token -> the session it imported (one import per token).
    rounds : dict of int to int
        Run -> newest round seen (tokens accepted, :meth:`seen_round`).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.import_lock = threading.Lock()
        self.nonces: dict[str, NonceUse] = {}
        self.imported: dict[str, str] = {}
        self.rounds: dict[int, int] = {}

    def check_round(self, run_id: int, server_round: int) -> None:
        """Refuse a token of a round older than the newest one seen for its run (hold :attr:`lock`).

        Raises
        ------
        SessionStateError
            If ``server_round`` is below the newest round seen for ``run_id`` (``FAILED_PRECONDITION``).
        """
        newest = self.rounds.get(run_id)
        if newest is not None and server_round < newest:
            raise SessionStateError(
                f"token is for round {server_round} of run {run_id}, this edge server has seen round {newest}"
            )

    def seen_round(self, run_id: int, server_round: int) -> None:
        """Record that ``run_id`` has reached ``server_round`` (rounds never go back; hold :attr:`lock`)."""
        self.rounds[run_id] = max(self.rounds.get(run_id, server_round), server_round)

    def forget_expired_nonces(self) -> None:
        """Drop ``Open`` tokens expired for a minute, now and then (hold :attr:`lock`): whenever more than 1024
        are remembered, else at every 64th."""
        now = self.clock()
        if len(self.nonces) > 1024 or len(self.nonces) % 64 == 0:
            for nonce in [n for n, u in self.nonces.items() if u.expires_at < now - 60]:
                del self.nonces[nonce]
