"""``edgeflower client-token``: issue a serving-client token, so clients never hold the shared secret.

Whoever holds the secret can issue any role (the controller's, a device's); a serving client needs only a ``client``
token: it reaches the controller's ``Predict`` and ``Status`` and nothing else (the role table is
:data:`edgeflower.transport.auth.RPC_ROLES`). The operator runs this next to the secret and hands the token file to
the client (``edgeflower predict --token-file``). Tokens expire: issue a new one when it does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["MAX_TTL_S", "register"]

MAX_TTL_S = 3600.0
"""Longest lifetime a client token may be issued for: an hour, the longest lifetime the controller accepts
(:data:`edgeflower.transport.auth.MAX_LIFETIME_S`)."""


def _run(args: argparse.Namespace) -> int:
    from edgeflower.transport.auth import ROLE_CLIENT, TokenIssuer, load_secret

    if not 0 < args.ttl <= MAX_TTL_S:
        raise ValueError(f"--ttl must be in (0, {MAX_TTL_S:.0f}] seconds, got {args.ttl}")
    token = TokenIssuer(load_secret(args.secret_file)).issue(0, args.client_id, 0, ttl_s=args.ttl, role=ROLE_CLIENT)
    if args.out is None:
        print(token)
        return 0
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by its owner only
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    print(f"client token for client {args.client_id}, valid {args.ttl:.0f} s, written to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``client-token`` subcommand."""
    p = sub.add_parser(
        "client-token",
        help="issue a serving-client token (clients get the token, never the shared secret)",
        description=(
            "Issue a token of the `client` role for `edgeflower predict --token-file` (or ServingClient): it reaches "
            "the controller's Predict and Status only, and expires after --ttl seconds."
        ),
    )
    p.add_argument("--secret-file", required=True, help="the shared secret of the controller and nodes")
    p.add_argument(
        "--client-id",
        type=int,
        default=0,
        help="integer naming the client: the controller scopes request ids by it, so give every client its own "
        "(clients sharing one share their request ids and pending list) and keep it when renewing the token",
    )
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds the token is valid (at most an hour)")
    p.add_argument("--out", type=Path, default=None, help="write the token to this file (mode 0600) instead of stdout")
    p.set_defaults(func=_run)
