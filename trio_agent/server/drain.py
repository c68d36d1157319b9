"""Draining a node: let running requests finish, then close each connection with 1012.

A node of a cluster that receives SIGTERM drains instead of shutting down
(``docs/cluster.md``, "Drain"): ``/readyz`` answers 503 at once and new handshakes
are refused (the load balancer takes the node out of its rotation), and each
session is closed with a real close frame 1012 (service restart) as soon as it
has no request running, so that its client resumes on another node. A request
still running after ``drain_s`` ends with ``DONE{status: shutdown}``, as in a
shutdown, and then its connection is closed with 1012.

The server's part is :meth:`AgentServer.drain
<trio_agent.server.agent_server.AgentServer.drain>`; a session's part is
:class:`SessionDrain`, a base of :class:`~trio_agent.server.session.Session`.
Nothing queued for the client is dropped: a session ends with ``flush=True``, so
its connection writes every queued frame (the DONE, and the STREAM frames queued
before it) before the close frame, within the shutdown grace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import trio

from trio_agent.protocol.messages import CloseCode
from trio_agent.server.connection import Connection
from trio_agent.server.request_runner import RequestRunner
from trio_agent.server.session_end import SessionEnd

__all__ = ["DRAIN_CLOSE_REASON", "DRAIN_FLUSH_S", "SessionDrain", "drain_sessions"]

#: The reason of the close frame 1012 a draining node sends.
DRAIN_CLOSE_REASON: Final = "node draining: resume elsewhere"

#: How long, once ``drain_s`` has passed, the last connections may take to write
#: their DONE{shutdown} and close, before the server cancels what is left. With the
#: close handshake's own bound (1 s), the node is gone within ``drain_s`` + 2 s.
DRAIN_FLUSH_S: Final = 1.0


class SessionDrain:
    """A session's part of a drain. :class:`~trio_agent.server.session.Session` sets
    every attribute named here."""

    connection: Connection | None
    _requests: RequestRunner
    _end: SessionEnd | None
    begin_shutdown: Callable[[str, CloseCode], None]

    async def drain(self, deadline: float) -> None:
        """End this session with 1012 once it has no request running, at the latest at
        ``deadline`` (a :func:`trio.current_time` value).

        A session with no request running, or with no connection attached, ends at
        once: while the node drains nobody can resume it here (handshakes are
        refused), so holding it would only keep the node up. Otherwise it waits for
        its request tasks to end (a REQUEST read meanwhile still runs, and is waited
        for too), or for its connection to drop. Then
        :meth:`~trio_agent.server.session.Session.begin_shutdown` ends it: requests
        still running get ``DONE{status: shutdown}`` (their scopes cancelled with
        the drain's reason) and the connection writes what is queued, then closes
        with 1012.

        Cancellation: the wait is cancellable (it holds nothing); once it is over,
        the end is synchronous, so a cancelled drain never leaves a session half
        ended. Returns at once for a session that has already ended.
        """
        with trio.move_on_at(deadline):
            while self._end is None and self._requests.running:
                connection = self.connection
                if connection is None:
                    break
                await _first_of(self._requests.wait_all_ended, connection.gone.wait)
        if self._end is None:
            self.begin_shutdown(DRAIN_CLOSE_REASON, CloseCode.SERVICE_RESTART)


async def drain_sessions(sessions: Sequence[SessionDrain], drain_s: float) -> float:
    """Drain ``sessions`` (one task each, all started at once); return when each has
    begun to end, at the latest ``drain_s`` from now. Returns the time after which
    the server should cancel what is left: :data:`DRAIN_FLUSH_S` after the drain,
    for the last connections to flush and close.

    Cancellable: the drain tasks live in a nursery of the calling task, and a
    cancelled drain leaves each session either ended or untouched.
    """
    deadline = trio.current_time() + drain_s
    async with trio.open_nursery() as drains:
        for session in sessions:
            drains.start_soon(session.drain, deadline)
    return max(deadline, trio.current_time()) + DRAIN_FLUSH_S


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns; the others are cancelled."""
    async with trio.open_nursery() as nursery:

        async def wait_then_stop(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel(reason="one wait is over")

        for wait in waits:
            nursery.start_soon(wait_then_stop, wait)
