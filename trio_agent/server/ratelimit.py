"""Flood control for one session's client frames: a token bucket and a hard limit.

Pure: the caller passes the time. docs/security.md explains refusals and when a
flooding session is closed.
"""

from __future__ import annotations

from enum import Enum


class Verdict(Enum):
    ACCEPT = "accept"  # act on the frame
    REFUSE = "refuse"  # answer it with ERROR{RATE_LIMITED}, do not act on it
    CLOSE = "close"  # close the session with 1008


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate_per_s``; starts full."""

    def __init__(self, *, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self._updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._updated = max(self._updated, now)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate_per_s)

    @property
    def full(self) -> bool:
        return self.tokens >= self.burst

    def take(self, now: float, count: int = 1) -> bool:
        """Take ``count`` tokens if there are that many (none otherwise)."""
        self.refill(now)
        if self.tokens >= count:
            self.tokens -= count
            return True
        return False


class FrameRateLimit:
    """The per-session verdict on each client frame.

    :param rate_per_s: sustained frames per second.
    :param burst: frames a client may send at once after a quiet period.
    :param close_after: refused frames in one flood before the session is closed.
    :param now: the current time, in the same clock as later calls.
    """

    def __init__(self, *, rate_per_s: float, burst: int, close_after: int, now: float) -> None:
        if close_after < 0:
            raise ValueError("close_after must not be negative")
        self._bucket = TokenBucket(rate_per_s=rate_per_s, burst=burst, now=now)
        self.close_after = close_after
        #: Frames refused in the current flood.
        self.refused_in_flood = 0
        #: Frames refused over the session's life.
        self.refused_total = 0

    def check(self, now: float) -> Verdict:
        """The verdict on one frame that arrives at ``now``."""
        self._bucket.refill(now)
        if self._bucket.full:
            self.refused_in_flood = 0
        if self._bucket.take(now):
            return Verdict.ACCEPT
        self.refused_in_flood += 1
        self.refused_total += 1
        if self.refused_in_flood > self.close_after:
            return Verdict.CLOSE
        return Verdict.REFUSE
