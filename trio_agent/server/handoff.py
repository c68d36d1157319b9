"""A session's side of cluster mode: handed to another node, or relaying from one.

Part of :class:`~trio_agent.server.session.Session` (this class is one of its
bases). When a client resumes its session on another node, this node's session
:meth:`~SessionHandoff.move_to` it: the requests that still run here go on, their
frames written to the store only, and the other node relays them
(:mod:`trio_agent.cluster.relay`), each as a request of its own there
(:meth:`~SessionHandoff.relay_request`). ``docs/cluster.md`` tells the whole story.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from trio_agent.agents import Agent, export_session_states
from trio_agent.observability.events import SessionEvents
from trio_agent.protocol.messages import CloseCode
from trio_agent.server.cluster_link import ClusterLink
from trio_agent.server.connection import Connection
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.registry import RequestRecord, RequestRegistry
from trio_agent.server.request_runner import RequestRunner
from trio_agent.server.resume_book import ResumeBook
from trio_agent.server.session_end import SessionEnd
from trio_agent.server.writer import NOWHERE, Writer

__all__ = ["SessionHandoff"]


class SessionHandoff:
    """The cluster's part of a session. :class:`~trio_agent.server.session.Session` sets
    every attribute named here."""

    session_id: str
    moved_to: str | None
    connection: Connection | None
    events: SessionEvents
    registry: RequestRegistry
    lanes: OutboundLanes
    agent_state: dict[object, Any]
    _agents: Mapping[str, Agent]
    _book: ResumeBook | None
    _end: SessionEnd | None
    _nursery: trio.Nursery | None
    _requests: RequestRunner
    _msg_ids: MessageIds
    _end_session: Callable[[SessionEnd], None]
    _frame_written: Callable[[Outbound, str | bytes], None]
    _notify: Callable[[], None]

    def _share_agent_state(self, cluster: ClusterLink) -> None:
        """A request ended here: what the agents keep goes to the store, for a node
        that takes the session over (``trio_agent.agents.portable``)."""
        if (state := export_session_states(self._agents, self.agent_state)) is not None:
            cluster.agent_state_changed(self.session_id, state)

    def move_to(self, node_id: str) -> None:
        """The session was resumed on ``node_id``: stop serving it here.

        Synchronous. A connection still attached (a zombie the client gave up on)
        is closed with 4001; the requests still running here go on, their frames
        written to the store only (the other node relays them), and the session
        ends here once each has its DONE there.
        """
        if self.moved_to is not None or self._end is not None:
            return
        self.moved_to = node_id
        if self._book is not None:
            self._book.close(self.session_id)
        self.lanes.drop_control()
        if self.connection is not None:
            self.connection.ends(
                SessionEnd(
                    f"resumed on node {node_id}", CloseCode.RESUMED_ELSEWHERE, resumable=True
                )
            )
        else:
            self._start_headless_writer()
        self._notify()

    def relay_request(
        self,
        request_id: str,
        *,
        node_id: str,
        next_seq: int,
        relay: Callable[[RequestRecord], Awaitable[None]],
    ) -> None:
        """Cluster: ``request_id`` runs on ``node_id``; the client already has (or gets
        in the replay) its frames before ``next_seq``. Its task here is ``relay``."""
        assert self._nursery is not None
        record = self.registry.admit(request_id, agent="", scope=trio.CancelScope())
        record.runs_on = node_id
        record.frames_queued = record.frames_written = next_seq
        self._requests.start_relay(self._nursery, record, relay)

    def _start_headless_writer(self) -> None:
        """Write the requests' frames to the store only (see :meth:`move_to`)."""
        assert self._nursery is not None
        writer = Writer(
            NOWHERE,
            session_id=self.session_id,
            lanes=self.lanes,
            registry=self.registry,
            msg_ids=self._msg_ids,
            events=self.events,
            batch_frames=1,
            cork=None,
            end_session=self._end_session,
            on_written=self._frame_written,
        )
        self.lanes.writer_back()
        self._nursery.start_soon(writer.run, name=f"writer {self.session_id} (to the store)")
