"""The edge server's token ledger forgets used ``Open`` tokens on its own clock (moved by the test, never waited
for): only once they expired a minute ago, so a used token is refused as used for as long as it would be accepted."""

from __future__ import annotations

from edgeflower.edge.ledger import NonceUse, TokenLedger


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_used_open_tokens_are_forgotten_on_the_ledgers_clock_only_a_minute_after_they_expired() -> None:
    clock = _Clock(1_000_000.0)
    ledger = TokenLedger(clock)
    with ledger.lock:
        for i in range(61):
            ledger.nonces[f"old-{i}"] = NonceUse(expires_at=clock.now - 61, digest=b"")
        ledger.nonces["recent"] = NonceUse(expires_at=clock.now - 59, digest=b"")  # expired, not a minute ago
        ledger.nonces["live"] = NonceUse(expires_at=clock.now + 600, digest=b"")
        ledger.forget_expired_nonces()
        assert len(ledger.nonces) == 63  # swept only now and then: at every 64th
        ledger.nonces["live-2"] = NonceUse(expires_at=clock.now + 600, digest=b"")
        ledger.forget_expired_nonces()
        assert set(ledger.nonces) == {"recent", "live", "live-2"}
        clock.now += 2  # "recent" expired over a minute ago now; a sweep runs whenever more than 1024 are held
        for i in range(1100):
            ledger.nonces[f"new-{i}"] = NonceUse(expires_at=clock.now + 600, digest=b"")
        ledger.forget_expired_nonces()
        assert "recent" not in ledger.nonces and len(ledger.nonces) == 1102
