"""The token bucket that rate-limits page messages."""

from __future__ import annotations

import pytest

from mccp.limits import TokenBucket


def test_burst_then_rate() -> None:
    b = TokenBucket(rate=20.0, burst=40.0, now=0.0)
    assert all(b.allow(0.0) for _ in range(40))
    assert not b.allow(0.0)
    assert b.allow(0.05)  # 1 token per 50 ms
    assert not b.allow(0.05)
    # 0.95 s refills 19 tokens, then one second of steady asking gets 20 more (floor effects: 1).
    assert sum(b.allow(1.0 + i / 1000) for i in range(1000)) in (38, 39)


def test_refill_is_capped_at_burst() -> None:
    b = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    assert [b.allow(1000.0) for _ in range(4)] == [True, True, True, False]


def test_clock_going_back_does_not_add_tokens() -> None:
    b = TokenBucket(rate=10.0, burst=1.0, now=5.0)
    assert b.allow(5.0)
    assert not b.allow(1.0)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0.0, burst=1.0, now=0.0)
