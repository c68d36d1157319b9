"""What a session tells the cluster, and asks of it: the server's side of cluster mode.

The server never imports :mod:`trio_agent.cluster`; a node of a cluster hands the
server a :class:`ClusterLink` (``AgentServer.cluster``), and the session calls it.
Every call but :meth:`ClusterLink.resume` and :meth:`ClusterLink.session_stored`
is synchronous and never blocks: it queues work for the node's own tasks, so a
slow or absent Redis can delay a resume on another node, never a reply
(``docs/cluster.md``). A new session's SESSION frame alone waits for the store
(bounded, and not while it is unreachable): a client may resume elsewhere as soon
as it has that frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from trio_agent.protocol.messages import ResumeMessage
from trio_agent.server.replay import FrameSort

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

from trio_agent.server.connection import HandOver

__all__ = ["ClusterLink"]


class ClusterLink(Protocol):
    """A node of a cluster, as a session sees it."""

    node_id: str

    @property
    def problem(self) -> str | None:
        """Why the node is degraded (the store unreachable, ...), or ``None``."""
        ...

    def session_opened(self, session_id: str, token: str) -> None:
        """A resumable session opened here, with its first resume token."""
        ...

    async def session_stored(self, session_id: str) -> None:
        """Return once the store holds the record of a session opened here (bounded;
        at once when the store is unreachable). A checkpoint."""
        ...

    def session_detached(self, session_id: str, window_s: float) -> None:
        """Its connection dropped: it may be resumed (on any node) for ``window_s``."""
        ...

    def session_closed(self, session_id: str) -> None:
        """It ended here and lives nowhere else: forget it in the store."""
        ...

    def request_started(self, session_id: str, request_id: str) -> None:
        """A request of the session runs on this node now."""
        ...

    def frame_written(
        self,
        session_id: str,
        request_id: str,
        sort: FrameSort,
        seq: int,
        data: str | bytes,
        *,
        frames: int = -1,
    ) -> None:
        """A frame of a request was written here: mirror it (``frames``: a DONE's count)."""
        ...

    def agent_state_changed(self, session_id: str, state: str) -> None:
        """What the session's agents keep changed (JSON): store it for a node that takes over."""
        ...

    def interrupt_elsewhere(
        self, node_id: str, session_id: str, msg_id: str, request_ids: list[str], reason: str
    ) -> None:
        """INTERRUPT ``msg_id`` read here cut requests that run on ``node_id``: tell it."""
        ...

    async def resume(self, ws: WebSocketConnection, message: ResumeMessage) -> HandOver | None:
        """Decide a RESUME read on ``ws``: the session to serve (held here, or taken over
        from another node), or ``None`` once the refusal has been sent and the
        connection closed."""
        ...
