"""The seal of a migrated session state: two halves hashed at once, bound to the length and the migration token."""

from __future__ import annotations

import hashlib
import os

import pytest

from edgeflower.edge.sealing import seal, state_digest, unseal
from edgeflower.transport import EdgeAuthError

SECRET = b"sealing-test-shared-secret-0123456789"


def _reference_digest(data: bytes) -> bytes:
    half = len(data) // 2 if len(data) >= 1 << 20 else len(data)
    parts = hashlib.sha256(data[:half]).digest() + (hashlib.sha256(data[half:]).digest() if half < len(data) else b"")
    return hashlib.sha256(len(data).to_bytes(8, "little") + parts).digest()


@pytest.mark.parametrize("size", [0, 1000, (1 << 20) - 1, 1 << 20, 3_522_001], ids=str)
def test_the_two_thread_digest_is_sha256_of_both_halves_bound_to_the_length(size):
    data = os.urandom(size)
    assert state_digest(data) == _reference_digest(data)


@pytest.mark.parametrize("size", [1000, 3_000_000], ids=["one-thread", "two-threads"])
def test_any_changed_byte_another_length_or_another_token_fails_the_seal(size):
    state = os.urandom(size)
    mac = seal(state, "token-a", SECRET)
    unseal(state, "token-a", mac, SECRET)  # intact: no error
    for i in (0, size // 2 - 1, size // 2, size - 1):  # both halves, either side of the cut
        changed = bytearray(state)
        changed[i] ^= 0x01
        with pytest.raises(EdgeAuthError, match="integrity"):
            unseal(bytes(changed), "token-a", mac, SECRET)
    for other in (state[:-1], state + b"\0"):
        with pytest.raises(EdgeAuthError, match="integrity"):
            unseal(other, "token-a", mac, SECRET)
    with pytest.raises(EdgeAuthError, match="integrity"):
        unseal(state, "token-b", mac, SECRET)
    with pytest.raises(EdgeAuthError, match="integrity"):
        unseal(state, "token-a", seal(state, "token-a", b"another-secret-0123456789-abcdefgh"), SECRET)
