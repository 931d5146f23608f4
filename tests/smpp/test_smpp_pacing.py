"""Pacing helpers of the SMPP client: the token bucket and reconnect back-off."""

from __future__ import annotations

import random

import pytest

from sms.smpp.client import Backoff, TokenBucket


def test_token_bucket_spacing() -> None:
    """One token per 1/rate seconds; a pause holds everything until it ends."""
    bucket = TokenBucket(rate=10, burst=1, now=0.0)
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.1) == 0
    bucket.pause_until(1.0)
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == pytest.approx(0.1)
    assert bucket.take(1.1) == 0


def test_token_bucket_rate_change_keeps_what_was_earned() -> None:
    """A node's share of the account's rate changes (callcenter/cluster/smpp.py): tokens earned
    at the old rate stay, the spacing from then on is the new rate's."""
    bucket = TokenBucket(rate=10, burst=1, now=0.0)
    assert bucket.take(0.0) == 0
    bucket.set_rate(5, 0.05)  # half a token earned at 10/s
    assert bucket.take(0.05) == pytest.approx(0.1)  # the other half at 5/s
    assert bucket.take(0.15) == 0
    assert bucket.take(0.15) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        bucket.set_rate(0, 1.0)


def test_backoff_doubles_with_jitter_and_caps() -> None:
    """Delays double per attempt within [1, 1.5] x base, stop at the maximum, reset to the minimum."""
    backoff = Backoff(1.0, 10.0, random.Random(1))
    delays = [backoff.next() for _ in range(6)]
    for attempt, delay in enumerate(delays):
        base = 2.0**attempt
        assert min(10.0, base) <= delay <= min(10.0, base * 1.5)
    assert delays[-1] == 10.0
    backoff.reset()
    assert 1.0 <= backoff.next() <= 1.5
