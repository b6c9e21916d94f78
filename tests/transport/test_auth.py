"""Session tokens: HMAC-signed, bound to (run, node, round), expiring, optionally bound to one edge server."""

from __future__ import annotations

import base64
import json

import pytest

from edgeflower.transport import EdgeAuthError, TokenIssuer, TokenVerifier, load_secret
from edgeflower.transport.auth import MAX_LIFETIME_S

SECRET = b"0123456789abcdef-shared-secret"


def test_issued_token_verifies_to_its_claims() -> None:
    token = TokenIssuer(SECRET).issue(run_id=3, node_id=42, server_round=5, edge_id="e1", ttl_s=60)
    claims = TokenVerifier(SECRET, edge_id="e1").verify(token)
    assert claims.owner == (3, 42, 5) and claims.edge_id == "e1"


def test_tokens_are_unique_even_for_the_same_claims() -> None:
    issuer = TokenIssuer(SECRET)
    assert issuer.issue(1, 2, 3) != issuer.issue(1, 2, 3)


def test_token_signed_with_another_secret_is_refused() -> None:
    token = TokenIssuer(b"another secret of 16+ bytes").issue(1, 2, 3)
    with pytest.raises(EdgeAuthError, match="signature"):
        TokenVerifier(SECRET).verify(token)


def test_tampered_payload_is_refused() -> None:
    token = TokenIssuer(SECRET).issue(1, 2, 3)
    body, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["node"] = 7
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(EdgeAuthError, match="signature"):
        TokenVerifier(SECRET).verify(f"{forged}.{sig}")


def test_expired_token_is_refused_unless_expiry_is_not_checked() -> None:
    token = TokenIssuer(SECRET).issue(1, 2, 3, ttl_s=-5)
    with pytest.raises(EdgeAuthError, match="expired"):
        TokenVerifier(SECRET).verify(token)
    assert TokenVerifier(SECRET).verify(token, check_expiry=False).node_id == 2


def test_edge_bound_token_is_refused_by_other_edge_servers() -> None:
    token = TokenIssuer(SECRET).issue(1, 2, 3, edge_id="e1")
    with pytest.raises(EdgeAuthError, match="'e1'"):
        TokenVerifier(SECRET, edge_id="e2").verify(token)
    with pytest.raises(EdgeAuthError, match="'e1'"):
        TokenVerifier(SECRET).verify(token)
    unbound = TokenIssuer(SECRET).issue(1, 2, 3)
    assert TokenVerifier(SECRET, edge_id="e2").verify(unbound).edge_id is None


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.!!!", "x" * 5000, None])
def test_malformed_tokens_are_refused(token: object) -> None:
    with pytest.raises(EdgeAuthError, match=r"malformed|signature"):
        TokenVerifier(SECRET).verify(token)  # type: ignore[arg-type]


def test_short_secrets_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenIssuer(b"short")
    path = tmp_path / "secret"
    path.write_bytes(b"  " + SECRET + b"\n")
    assert load_secret(path) == SECRET
    path.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        load_secret(path)


def test_binary_secret_files_are_read_exactly_and_text_ones_without_their_newline(tmp_path) -> None:
    binary = b"\n\t" + bytes(range(32, 62)) + b"\x00 \n"  # random bytes may begin or end with whitespace
    (tmp_path / "bin").write_bytes(binary)
    assert load_secret(tmp_path / "bin") == binary
    (tmp_path / "txt").write_text("0123456789abcdef0123456789abcdef\n")
    assert load_secret(tmp_path / "txt") == b"0123456789abcdef0123456789abcdef"


def test_a_token_of_exactly_the_longest_lifetime_passes_at_any_issue_time() -> None:
    """``round-timeout = 3600`` issues tokens of exactly MAX_LIFETIME_S: ``exp - iat`` must not round above it."""
    now = [1.8e9]
    issuer = TokenIssuer(SECRET, clock=lambda: now[0])
    verifier = TokenVerifier(SECRET, clock=lambda: now[0])
    for step in (0.0, 0.1, 1 / 3, 12345.678901, 987654.3210987):
        now[0] = 1.8e9 + step
        verifier.verify(issuer.issue(1, 1, 1, ttl_s=MAX_LIFETIME_S))
    with pytest.raises(EdgeAuthError, match="lifetime"):
        verifier.verify(issuer.issue(1, 1, 1, ttl_s=MAX_LIFETIME_S + 1))
