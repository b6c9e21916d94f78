"""Role-scoped, short-lived tokens: an issuer (ServerApp, controller) signs them, the services verify them.

A token is ``<payload>.<signature>``, both base64url without padding:

* payload: canonical JSON (sorted keys, no spaces) of
  ``{"v": 2, "role": str, "run": int, "node": int, "round": int, "edge": str | null, "iat": float,
  "exp": float (unix time), "nonce": str}``;
* signature: ``HMAC-SHA256(secret, b"edgeflower-token-v2." + payload_b64)``.

Roles (:data:`ROLES`) say who holds the token. Every RPC accepts exactly what :data:`RPC_ROLES` names (the services
verify with ``roles=RPC_ROLES[...]``, and ``tests/security/test_attacks.py`` walks the table against real servers):

=========================  ===========================================  ===============================================
RPC                        accepts                                      called by
=========================  ===========================================  ===============================================
edge ``Health``            no token (control lane: status, id, count)   anyone (the pool asks an edge server's id)
edge ``Open``              ``device``; ``migration`` (restart mode:     a device, once per round (single-use token)
                           a fresh session at the destination)
edge ``Train``/``Close``   :data:`SESSION_OWNER`: the very token that   the device that opened the session
                           opened (or imported) the session
edge ``Migrate``           :data:`SESSION_OWNER`                        the device, at its source edge server
edge ``Import``            ``migration``, sealed with the secret        the source edge server (a migration peer)
edge ``Resume``            ``migration``                                the device, at the destination
node ``Deploy``/           ``controller``                               the serving controller
``Forward``/``Ping``
controller ``Predict``/    ``client``                                   a serving client
``Status``
=========================  ===========================================  ===============================================

There is no role for an inference node: a node originates no call (the controller deploys to it, forwards through
it and pings it; a node never registers or reports), so no service has anything to accept from a node. A ``node``
role existed for that and is gone; a token naming it is refused everywhere as an unknown role.

Binding. Tokens are bound to a run, a node and a round, and to one service (``edge``: the edge server's or the
inference node's id). A verifier with an id refuses a token naming another id; a verifier without one refuses every
token naming an id. Every issuer binds what it hands out: the ServerApp's :class:`~edgeflower.edge.pool.EdgePool`
binds device and migration tokens to the edge server's id (an external edge server without ``--edge-id`` gets
unbound tokens, with a WARNING), the controller binds each node's token to that node's id (by default the address it
dials, which is what an inference node without ``--node-id`` takes as its id). Tokens naming no id are still accepted
by services with an id: only a holder of the secret can make one, and such a holder can make any token.
Roles and binding separate only parties that do not hold the secret: a serving client that mints its own token
with the shared secret (``edgeflower predict --secret-file``) could mint any role; hand clients tokens instead.

Rounds. An edge server remembers, per run, the newest round of any token it accepted (``Open``, ``Import``) and
the newest round the ServerApp announced to it (:meth:`~edgeflower.edge.server.EdgeServer.advance_round`, called for
in-process servers when the pool plans a round); it refuses an ``Open`` or ``Import`` whose token names an older
round (``FAILED_PRECONDITION``). See :mod:`edgeflower.edge.server` for exactly what that guarantees.

Lifetimes. Tokens live minutes (:data:`DEFAULT_TTL_S`); whoever holds the secret re-issues them. A verifier
refuses a token whose lifetime (``exp - iat``) exceeds its ``max_lifetime_s`` whatever the issuer signed, so a
leaked secret-holder's mistake (the controller's 10-year node tokens of old) cannot make a long-lived bearer token.
The ``nonce`` makes every token unique; edge servers use it to accept an ``Open`` token once.

The secret is shared by the issuer and the verifiers (at least 16 bytes). Verification recomputes the MAC over the
received payload bytes and compares in constant time (:func:`hmac.compare_digest`) before parsing anything, then
checks the version, the role, the expiry, the lifetime and, when the token names a service, that it is this one.
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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from edgeflower.transport.errors import EdgeAuthError

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_LIFETIME_S",
    "MIN_SECRET_BYTES",
    "ROLES",
    "ROLE_CLIENT",
    "ROLE_CONTROLLER",
    "ROLE_DEVICE",
    "ROLE_MIGRATION",
    "RPC_ROLES",
    "SESSION_OWNER",
    "RenewingToken",
    "TokenClaims",
    "TokenIssuer",
    "TokenVerifier",
    "load_secret",
]

MIN_SECRET_BYTES = 16
"""Shortest accepted shared secret."""

ROLE_DEVICE = "device"
ROLE_MIGRATION = "migration"
ROLE_CONTROLLER = "controller"
ROLE_CLIENT = "client"
ROLES = frozenset({ROLE_DEVICE, ROLE_MIGRATION, ROLE_CONTROLLER, ROLE_CLIENT})
"""Every role a token can name."""

SESSION_OWNER = "session-owner"
"""Not a role: an RPC marked with it accepts only the very token that opened (or imported) the session."""

RPC_ROLES: dict[str, frozenset[str]] = {
    "edge/Health": frozenset(),
    "edge/Open": frozenset({ROLE_DEVICE, ROLE_MIGRATION}),
    "edge/Train": frozenset({SESSION_OWNER}),
    "edge/Close": frozenset({SESSION_OWNER}),
    "edge/Migrate": frozenset({SESSION_OWNER}),
    "edge/Import": frozenset({ROLE_MIGRATION}),
    "edge/Resume": frozenset({ROLE_MIGRATION}),
    "node/Deploy": frozenset({ROLE_CONTROLLER}),
    "node/Forward": frozenset({ROLE_CONTROLLER}),
    "node/Ping": frozenset({ROLE_CONTROLLER}),
    "controller/Predict": frozenset({ROLE_CLIENT}),
    "controller/Status": frozenset({ROLE_CLIENT}),
}
"""What every RPC of the edge server, the inference node and the serving controller accepts (``service/Method``):
roles, :data:`SESSION_OWNER`, or nothing (no token: health)."""

DEFAULT_TTL_S = 600.0
"""Default token lifetime (10 minutes)."""

MAX_LIFETIME_S = 3600.0
"""Default longest lifetime a verifier accepts (``exp - iat``)."""

_VERSION = 2
_CONTEXT = b"edgeflower-token-v2."
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
    """Read a shared secret from a file: a text secret without its surrounding whitespace, a binary one exactly.

    A text file (printable ASCII, e.g. ``openssl rand -hex 32 > f``) loses the newline an editor or ``echo`` adds;
    binary bytes (``head -c 32 /dev/urandom > f``) are the secret as they are: stripping them would drop random
    bytes that happen to be whitespace, and a party holding the raw bytes in memory would then sign with another
    key.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the secret is shorter than :data:`MIN_SECRET_BYTES`.
    """
    data = Path(path).read_bytes()
    text = data.strip()
    return as_secret(text if all(0x20 <= b < 0x7F for b in text) else data)


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token grants.

    Attributes
    ----------
    run_id : int
        Flower run (0 for serving).
    node_id : int
        The device node (or serving client, or inference node index) the token belongs to.
    server_round : int
        The round the token belongs to.
    edge_id : str or None
        The service (edge server or inference node id) the token is for (``None``: any sharing the secret).
    expires_at : float
        Unix time after which the token is refused.
    role : str
        One of :data:`ROLES`.
    nonce : str
        Random, unique per token.
    issued_at : float
        Unix time the token was issued.
    """

    run_id: int
    node_id: int
    server_round: int
    edge_id: str | None
    expires_at: float
    role: str = ROLE_DEVICE
    nonce: str = ""
    issued_at: float = 0.0

    @property
    def owner(self) -> tuple[int, int, int]:
        """``(run_id, node_id, server_round)``."""
        return self.run_id, self.node_id, self.server_round


class TokenIssuer:
    """Issues tokens (the ServerApp for devices and migrations, the controller for its nodes).

    Parameters
    ----------
    secret : bytes or str
        Shared secret, at least :data:`MIN_SECRET_BYTES` bytes.
    clock : callable, optional
        Unix time now (default ``time.time``): a token is issued at it; tests move it.
    """

    def __init__(self, secret: bytes | str, *, clock: Callable[[], float] = time.time) -> None:
        self._key = as_secret(secret)
        self.clock = clock

    def issue(
        self,
        run_id: int,
        node_id: int,
        server_round: int,
        edge_id: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        role: str = ROLE_DEVICE,
    ) -> str:
        """Return a token.

        Parameters
        ----------
        run_id, node_id, server_round : int
            What the token is bound to.
        edge_id : str, optional
            Restrict the token to the service (edge server, inference node) with this id.
        ttl_s : float
            Seconds the token is valid (minutes: re-issue rather than issue long-lived tokens).
        role : str
            One of :data:`ROLES` (default ``device``).

        Raises
        ------
        ValueError
            For an unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"unknown token role {role!r}, expected one of {sorted(ROLES)}")
        now = self.clock()
        payload = {
            "v": _VERSION,
            "role": role,
            "run": int(run_id),
            "node": int(node_id),
            "round": int(server_round),
            "edge": edge_id,
            "iat": now,
            "exp": now + float(ttl_s),
            "nonce": secrets.token_hex(12),
        }
        body = _b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
        mac = hmac.new(self._key, _CONTEXT + body.encode("ascii"), hashlib.sha256).digest()
        return f"{body}.{_b64encode(mac)}"


class RenewingToken:
    """A token that re-issues itself before it expires (call the object to get a currently valid token).

    Parameters
    ----------
    issue : callable
        ``issue(ttl_s) -> token``.
    ttl_s : float
        Lifetime of each token; a new one is issued once less than half of it is left.
    clock : callable
        Unix time (injectable for tests).
    """

    def __init__(
        self, issue: Callable[[float], str], ttl_s: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._issue, self.ttl_s, self._clock = issue, float(ttl_s), clock
        self._token = ""
        self._renew_at = -float("inf")
        self.issued = 0

    def __call__(self) -> str:
        now = self._clock()
        if now >= self._renew_at:
            self._token = self._issue(self.ttl_s)
            self._renew_at = now + self.ttl_s / 2
            self.issued += 1
        return self._token


class TokenVerifier:
    """Verifies tokens (edge servers, inference nodes, the controller).

    Parameters
    ----------
    secret : bytes or str
        The secret shared with the :class:`TokenIssuer`.
    edge_id : str, optional
        This service's id; tokens naming another id (or any id, when this one has none) are refused. Tokens naming
        no id are accepted by every service sharing the secret.
    max_lifetime_s : float
        Tokens whose lifetime (``exp - iat``) is longer are refused.
    clock : callable, optional
        Unix time now (default ``time.time``), against which expiry is checked; tests move it.
    """

    def __init__(
        self,
        secret: bytes | str,
        edge_id: str | None = None,
        max_lifetime_s: float = MAX_LIFETIME_S,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = as_secret(secret)
        self.edge_id = edge_id
        self.max_lifetime_s = float(max_lifetime_s)
        self.clock = clock

    def verify(
        self,
        token: str,
        check_expiry: bool = True,
        roles: Collection[str] | str | None = None,
        *,
        any_edge: bool = False,
    ) -> TokenClaims:
        """Return the token's claims.

        Parameters
        ----------
        token : str
            The token.
        check_expiry : bool
            Refuse expired tokens.
        roles : str or collection of str, optional
            The roles allowed here (``None``: any role; every RPC names the roles it needs).
        any_edge : bool
            Accept a token scoped to any edge server or node, not only this verifier's (a source edge server checks
            the migration token it forwards to the destination it names).

        Raises
        ------
        EdgeAuthError
            If the token is malformed, forged, expired (when ``check_expiry``), too long-lived, of a role not
            allowed here, or for another service.
        """
        claims = _parse_claims(self._signed_body(token))
        self._check_claims(claims, check_expiry, roles, any_edge)
        return claims

    def _signed_body(self, token: str) -> str:
        """The token's body if the token is well-formed and signed with this verifier's key."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            raise EdgeAuthError("malformed token")
        body, sig = token.split(".")
        try:
            given = _b64decode(sig)
        except (binascii.Error, ValueError) as exc:
            raise EdgeAuthError("malformed token signature") from exc
        expected = hmac.new(self._key, _CONTEXT + body.encode("ascii", "replace"), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            raise EdgeAuthError("invalid token signature")
        return body

    def _check_claims(
        self, claims: TokenClaims, check_expiry: bool, roles: Collection[str] | str | None, any_edge: bool = False
    ) -> None:
        """Refuse signed claims that are not for this service and these ``roles`` now."""
        if claims.role not in ROLES:
            raise EdgeAuthError(f"unknown token role {claims.role!r:.40}")
        allowed = {roles} if isinstance(roles, str) else roles
        if allowed is not None and claims.role not in allowed:
            raise EdgeAuthError(f"a {claims.role} token is not accepted here (needs: {', '.join(sorted(allowed))})")
        now = self.clock()
        if check_expiry and claims.expires_at < now:
            raise EdgeAuthError(f"token expired {now - claims.expires_at:.1f} s ago")
        if claims.expires_at - claims.issued_at > self.max_lifetime_s + 1e-3:  # a token of exactly the limit passes
            raise EdgeAuthError(
                f"token lifetime {claims.expires_at - claims.issued_at:.0f} s exceeds the {self.max_lifetime_s:.0f} s "
                "this service accepts"
            )
        if not any_edge and claims.edge_id is not None and claims.edge_id != self.edge_id:
            raise EdgeAuthError(f"token is for edge server or node {claims.edge_id!r:.80}, this is {self.edge_id!r}")


def _parse_claims(body: str) -> TokenClaims:
    """The claims of a signed token's body (its signature already checked)."""
    try:
        data = json.loads(_b64decode(body))
        if data["v"] != _VERSION:
            raise ValueError(f"token version {data['v']!r}")
        return TokenClaims(
            run_id=int(data["run"]),
            node_id=int(data["node"]),
            server_round=int(data["round"]),
            edge_id=None if data["edge"] is None else str(data["edge"]),
            expires_at=float(data["exp"]),
            role=str(data["role"]),
            nonce=str(data["nonce"]),
            issued_at=float(data["iat"]),
        )
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise EdgeAuthError("malformed token payload") from exc
