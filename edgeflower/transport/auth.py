"""Session tokens: the ServerApp issues them, edge servers verify them.

A token is ``<payload>.<signature>``, both base64url without padding:

* payload: canonical JSON (sorted keys, no spaces) of
  ``{"v": 1, "run": int, "node": int, "round": int, "edge": str | null, "exp": float (unix time), "nonce": str}``;
* signature: ``HMAC-SHA256(secret, b"edgeflower-session-v1." + payload_b64)``.

The secret is shared by the ServerApp and the edge servers (at least 16 bytes). Verification recomputes the MAC over
the received payload bytes and compares in constant time (:func:`hmac.compare_digest`) before parsing anything, then
checks the expiry and, when the token names an edge server, that it is this one. An edge server binds each session
to the token that opened it, so only the holder of that token (one node, one run, one round) can drive or close it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from edgeflower.transport.errors import EdgeAuthError

__all__ = ["MIN_SECRET_BYTES", "TokenClaims", "TokenIssuer", "TokenVerifier", "load_secret"]

MIN_SECRET_BYTES = 16
"""Shortest accepted shared secret."""

_CONTEXT = b"edgeflower-session-v1."
_MAX_TOKEN_CHARS = 4096


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def as_secret(secret: bytes | str) -> bytes:
    """The shared secret as bytes; ``ValueError`` when it is shorter than :data:`MIN_SECRET_BYTES`."""
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the shared secret must be at least {MIN_SECRET_BYTES} bytes, got {len(key)}")
    return key


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """Read a shared secret from a file (surrounding whitespace is stripped).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the secret is shorter than :data:`MIN_SECRET_BYTES`.
    """
    return as_secret(Path(path).read_bytes().strip())


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token grants.

    Attributes
    ----------
    run_id : int
        Flower run.
    node_id : int
        The device node the session belongs to.
    server_round : int
        The round the session belongs to.
    edge_id : str or None
        The edge server the token is for (``None``: any edge server sharing the secret).
    expires_at : float
        Unix time after which the token can no longer open a session.
    """

    run_id: int
    node_id: int
    server_round: int
    edge_id: str | None
    expires_at: float

    @property
    def owner(self) -> tuple[int, int, int]:
        """``(run_id, node_id, server_round)``."""
        return self.run_id, self.node_id, self.server_round


class TokenIssuer:
    """Issues session tokens (used by the ServerApp).

    Parameters
    ----------
    secret : bytes or str
        Shared secret, at least :data:`MIN_SECRET_BYTES` bytes.
    """

    def __init__(self, secret: bytes | str) -> None:
        self._key = as_secret(secret)

    def issue(
        self,
        run_id: int,
        node_id: int,
        server_round: int,
        edge_id: str | None = None,
        ttl_s: float = 3600.0,
    ) -> str:
        """Return a token for one node's session in one round.

        Parameters
        ----------
        run_id, node_id, server_round : int
            The session's owner.
        edge_id : str, optional
            Restrict the token to the edge server with this id.
        ttl_s : float
            Seconds during which the token can open a session.
        """
        payload = {
            "v": 1,
            "run": int(run_id),
            "node": int(node_id),
            "round": int(server_round),
            "edge": edge_id,
            "exp": time.time() + float(ttl_s),
            "nonce": secrets.token_hex(8),
        }
        body = _b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
        mac = hmac.new(self._key, _CONTEXT + body.encode("ascii"), hashlib.sha256).digest()
        return f"{body}.{_b64encode(mac)}"


class TokenVerifier:
    """Verifies session tokens (used by edge servers).

    Parameters
    ----------
    secret : bytes or str
        The secret shared with the :class:`TokenIssuer`.
    edge_id : str, optional
        This edge server's id; tokens naming another edge server (or any edge server, when this one has no id)
        are rejected. Tokens naming no edge server are accepted by every edge server sharing the secret.
    """

    def __init__(self, secret: bytes | str, edge_id: str | None = None) -> None:
        self._key = as_secret(secret)
        self.edge_id = edge_id

    def verify(self, token: str, check_expiry: bool = True) -> TokenClaims:
        """Return the token's claims.

        Raises
        ------
        EdgeAuthError
            If the token is malformed, forged, expired (when ``check_expiry``) or for another edge server.
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            raise EdgeAuthError("malformed session token")
        body, sig = token.split(".")
        try:
            given = _b64decode(sig)
        except (binascii.Error, ValueError) as exc:
            raise EdgeAuthError("malformed session token signature") from exc
        expected = hmac.new(self._key, _CONTEXT + body.encode("ascii", "replace"), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            raise EdgeAuthError("invalid session token signature")
        try:
            data = json.loads(_b64decode(body))
            claims = TokenClaims(
                run_id=int(data["run"]),
                node_id=int(data["node"]),
                server_round=int(data["round"]),
                edge_id=None if data["edge"] is None else str(data["edge"]),
                expires_at=float(data["exp"]),
            )
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise EdgeAuthError("malformed session token payload") from exc
        if check_expiry and claims.expires_at < time.time():
            raise EdgeAuthError(f"session token expired {time.time() - claims.expires_at:.1f} s ago")
        if claims.edge_id is not None and claims.edge_id != self.edge_id:
            raise EdgeAuthError(f"session token is for edge server {claims.edge_id!r}, this is {self.edge_id!r}")
        return claims
