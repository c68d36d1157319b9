"""Resuming a session after a dropped connection (protocol v1.2): when to try, how
long to wait between attempts, and how the client tells the application.

Pure decisions plus a small event channel; the reconnect loop itself lives in
:mod:`trio_agent.client.connection`. docs/client.md ("Resume") has the rules.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, Literal

import trio

from trio_agent.client.errors import AgentClientError, ConnectionLost

__all__ = ["ConnectionEvent", "EventReporter", "ResumePolicy", "is_resumable"]

#: Close codes that end a session on purpose, so a client never resumes after them:
#: a normal close (1000), the server going away for good (1001), a policy close
#: after an ERROR (1008), another connection having resumed the session (4001).
NOT_RESUMABLE_CLOSE_CODES: Final = frozenset({1000, 1001, 1008, 4001})
#: How many connection events wait for the application before new ones are dropped.
EVENT_BUFFER: Final = 64

EventKind = Literal["reconnecting", "resumed", "resume_failed"]


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """Something that happened to the client's connection.

    ``reconnecting``: the connection dropped and attempt ``attempt`` starts after
    ``delay_s`` seconds; ``error`` is why the connection (or the previous attempt)
    failed. ``resumed``: attempt ``attempt`` resumed the session; responses go on.
    ``resume_failed``: the session cannot be resumed (``error`` says why); the
    client ends with :class:`~trio_agent.client.errors.ConnectionLost`.
    """

    kind: EventKind
    attempt: int
    delay_s: float | None = None
    error: AgentClientError | None = None

    def __str__(self) -> str:
        if self.kind == "reconnecting":
            return f"reconnecting (attempt {self.attempt}, in {self.delay_s or 0:.2f} s)"
        if self.kind == "resumed":
            return "resumed"
        return f"could not resume: {self.error}"


@dataclass(frozen=True, slots=True)
class ResumePolicy:
    """How hard the client tries to resume: at most ``attempts`` connections, the
    n-th after a jittered delay between half and all of
    ``min(backoff_max_s, backoff_s * 2 ** (n - 1))``. Jitter keeps the clients of a
    restarted proxy from all coming back at the same instant."""

    attempts: int = 5
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"resume_attempts must be at least 1, not {self.attempts!r}")
        if not 0 <= self.backoff_s <= self.backoff_max_s:
            raise ValueError(
                f"need 0 <= resume_backoff_s <= resume_backoff_max_s, "
                f"not {self.backoff_s!r} and {self.backoff_max_s!r}"
            )

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """The wait before attempt ``attempt`` (1-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


def is_resumable(lost: ConnectionLost) -> bool:
    """Whether a connection that ended this way may be resumed: any drop (no close
    frame, a heartbeat timeout, a 1006, a 1011, a drain's 1012), but not a close
    that ends the session on purpose (:data:`NOT_RESUMABLE_CLOSE_CODES`)."""
    return lost.code not in NOT_RESUMABLE_CLOSE_CODES


class EventReporter:
    """The sending side of :attr:`AgentClient.events`. Never blocks the client: the
    channel holds :data:`EVENT_BUFFER` events, and an event that finds it full is
    dropped and counted in :attr:`dropped` (a few events come per drop, so only an
    application that never reads loses any)."""

    def __init__(self) -> None:
        self._send, self.receive = trio.open_memory_channel[ConnectionEvent](EVENT_BUFFER)
        self.dropped = 0

    def report(self, event: ConnectionEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except trio.ClosedResourceError:
            pass  # the client has ended

    def close(self) -> None:
        """End the iteration of :attr:`AgentClient.events` (the client has ended)."""
        self._send.close()
