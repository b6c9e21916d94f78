"""Tokens name a role, live minutes and are renewed by their issuer; every service accepts only the roles it needs."""

from __future__ import annotations

import pytest

from edgeflower.transport.auth import ROLES, RenewingToken, TokenIssuer, TokenVerifier
from edgeflower.transport.errors import EdgeAuthError

SECRET = b"security-token-test-secret-0123456789"


def test_every_token_names_its_role_and_a_verifier_accepts_only_the_roles_it_is_given():
    issuer, verifier = TokenIssuer(SECRET), TokenVerifier(SECRET)
    for role in ROLES:
        token = issuer.issue(1, 2, 3, role=role)
        assert verifier.verify(token, roles=role).role == role
        others = sorted(ROLES - {role})
        with pytest.raises(EdgeAuthError, match=f"a {role} token is not accepted here"):
            verifier.verify(token, roles=others)
    with pytest.raises(ValueError, match="unknown token role"):
        issuer.issue(1, 2, 3, role="admin")


def test_a_token_living_longer_than_the_verifier_allows_is_refused_whoever_signed_it():
    ten_years = TokenIssuer(SECRET).issue(0, 1, 0, ttl_s=10 * 365 * 86400, role="controller")
    with pytest.raises(EdgeAuthError, match="lifetime"):
        TokenVerifier(SECRET).verify(ten_years, roles="controller")
    assert TokenVerifier(SECRET, max_lifetime_s=20 * 365 * 86400).verify(ten_years).role == "controller"
    default = TokenVerifier(SECRET).verify(TokenIssuer(SECRET).issue(0, 1, 0))
    assert default.expires_at - default.issued_at == 600  # ten minutes by default, not hours (a lifetime, not a time)


def test_tokens_of_the_old_format_without_a_role_are_refused():
    import base64
    import hashlib
    import hmac
    import json

    body = base64.urlsafe_b64encode(
        json.dumps({"v": 1, "run": 1, "node": 2, "round": 3, "edge": None, "exp": 2e9, "nonce": "n"}).encode()
    ).rstrip(b"=")
    mac = hmac.new(SECRET, b"edgeflower-token-v2." + body, hashlib.sha256).digest()
    token = f"{body.decode()}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(EdgeAuthError, match="malformed"):
        TokenVerifier(SECRET).verify(token)


def test_a_renewing_token_is_reissued_before_it_expires():
    now = [1000.0]
    issued: list[float] = []

    def issue(ttl_s: float) -> str:
        issued.append(ttl_s)
        return f"token-{len(issued)}"

    token = RenewingToken(issue, ttl_s=300.0, clock=lambda: now[0])
    assert token() == "token-1" and token() == "token-1"
    now[0] += 149.0
    assert token() == "token-1"
    now[0] += 2.0  # less than half the lifetime left: renewed
    assert token() == "token-2" and issued == [300.0, 300.0]
