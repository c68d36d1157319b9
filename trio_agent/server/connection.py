"""One connection attached to a session: its WebSocket, and why it ends.

Since v1.2 a session outlives its connections (``docs/architecture.md``): a
:class:`Connection` is what a session's reader and writer serve for as long as
the socket lasts. It lives in its own nursery, under the task that accepted the
socket; the session's request tasks live elsewhere, in the session's nursery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import trio
from trio_websocket import WebSocketConnection

from trio_agent.protocol.messages import ResumeMessage
from trio_agent.server.cork import CorkableStream
from trio_agent.server.session_end import SessionEnd

__all__ = ["ClusterResume", "Connection", "HandOver", "Resumable"]


class Resumable(Protocol):
    """What a connection hands itself over to: a session it can serve (``Session``;
    named structurally so that this module does not import the session's)."""

    session_id: str

    async def serve(
        self,
        ws: WebSocketConnection,
        cork: CorkableStream | None = None,
        *,
        resuming: HandOver | None = None,
    ) -> HandOver | ClusterResume | None: ...


@dataclass(frozen=True)
class HandOver:
    """A RESUME was accepted: the connection goes on to serve ``target``.

    ``token`` is the next resume token (RESUMED carries it).
    """

    target: Resumable
    message: ResumeMessage
    token: str


@dataclass(frozen=True)
class ClusterResume:
    """A RESUME read on a node of a cluster: the node decides it (through the
    store, atomically across nodes) once the reader has handed the socket back."""

    message: ResumeMessage


@dataclass(eq=False)
class Connection:
    """A WebSocket serving a session, for as long as it lasts."""

    ws: WebSocketConnection
    cork: CorkableStream | None = None
    #: Cancelled to stop this connection's reader (the connection is ending).
    reader_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: Why this connection ends while its session goes on (dropped, displaced).
    end: SessionEnd | None = None
    #: Set once this connection has stopped serving its session, down to its last task.
    gone: trio.Event = field(default_factory=trio.Event)
    #: Client frames read on it (a RESUME must be the first).
    frames_read: int = 0
    #: What the socket goes on to serve after this session: an accepted RESUME of
    #: another session, or (in a cluster) one the node has yet to decide.
    handover: HandOver | ClusterResume | None = None

    def ends(self, end: SessionEnd) -> None:
        """Record why this connection ends (the first reason wins) and stop its reader."""
        if self.end is None:
            self.end = end
            self.reader_scope.cancel(reason=end.reason)
