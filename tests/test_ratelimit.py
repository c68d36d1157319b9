"""Flood control as a pure state machine: the time is whatever the test says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.server.ratelimit import FrameRateLimit, TokenBucket, Verdict


def limit(rate: float = 10, burst: int = 5, close_after: int = 3) -> FrameRateLimit:
    return FrameRateLimit(rate_per_s=rate, burst=burst, close_after=close_after, now=0.0)


def test_a_burst_is_accepted_then_frames_are_refused():
    lim = limit()
    assert [lim.check(0.0) for _ in range(5)] == [Verdict.ACCEPT] * 5
    assert lim.check(0.0) is Verdict.REFUSE
    assert lim.refused_in_flood == 1


def test_tokens_come_back_at_the_rate():
    lim = limit(rate=10, burst=1)
    assert lim.check(0.0) is Verdict.ACCEPT
    assert lim.check(0.05) is Verdict.REFUSE
    assert lim.check(0.1) is Verdict.ACCEPT  # 0.1 s at 10/s: one token


def test_past_close_after_refusals_in_one_flood_the_verdict_is_close():
    lim = limit(burst=2, close_after=3)
    verdicts = [lim.check(0.0) for _ in range(2 + 3 + 1)]
    assert verdicts == [Verdict.ACCEPT] * 2 + [Verdict.REFUSE] * 3 + [Verdict.CLOSE]


def test_a_flood_is_forgiven_once_the_bucket_is_full_again():
    lim = limit(rate=10, burst=2, close_after=3)
    for _ in range(2 + 3):
        lim.check(0.0)
    assert lim.refused_in_flood == 3
    # 0.2 s at 10/s refills the burst of 2: the flood is over.
    assert lim.check(0.2) is Verdict.ACCEPT
    assert lim.refused_in_flood == 0
    assert lim.refused_total == 3


def test_a_client_a_little_over_the_rate_is_closed_eventually():
    """Never quiet long enough to refill: refusals accumulate until the close."""
    lim = limit(rate=10, burst=5, close_after=10)
    t, verdict = 0.0, Verdict.ACCEPT
    while verdict is not Verdict.CLOSE:
        verdict = lim.check(t)
        t += 1 / 12  # 12 frames/s against 10/s
        assert t < 60, "never closed"
    assert lim.refused_total == 11


def test_the_clock_going_backwards_gives_no_tokens():
    bucket = TokenBucket(rate_per_s=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_nonsense_settings_are_refused(rate, burst):
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate_per_s=rate, burst=burst, now=0)


@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 50),
    close_after=st.integers(0, 20),
    gaps=st.lists(st.floats(0, 2), max_size=300),
)
def test_invariants(rate, burst, close_after, gaps):
    """Whatever the timing: accepted frames never exceed burst + rate * elapsed, and
    at most close_after frames are refused in a flood before CLOSE."""
    lim = FrameRateLimit(rate_per_s=rate, burst=burst, close_after=close_after, now=0.0)
    t = 0.0
    accepted = 0
    for gap in gaps:
        t += gap
        verdict = lim.check(t)
        if verdict is Verdict.CLOSE:
            assert lim.refused_in_flood == close_after + 1
            return
        accepted += verdict is Verdict.ACCEPT
        assert accepted <= burst + rate * t + 1e-6
        assert lim.refused_in_flood <= close_after
