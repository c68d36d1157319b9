"""One session: its requests, its lanes, and the connections that serve it.

:class:`Session` is the session's lifecycle and its reader: it reads the client's
frames and acts on each one synchronously (an INTERRUPT cancels request scopes
right here), while the :class:`~trio_agent.server.writer.Writer` sends and the
:class:`~trio_agent.server.request_runner.RequestRunner` runs the requests.

Since protocol v1.2 a session outlives its connection. :meth:`Session.run` is the
session's task, in the server's nursery of sessions: its nursery holds the
request tasks. :meth:`Session.serve` is called by the task of each connection that
attaches to it (the first one, then each one that resumes it): the connection's
reader and writer live in a nursery of that task, and end with the socket. While
no connection is attached, requests run until their stream lane is full, then
wait for room (backpressure); a session nobody resumes within
``resume_window_s`` is ended ("client gone"), which cancels its requests.
The cancel-scope tree and the rules this code keeps are in
``docs/architecture.md``; how an interrupt travels, in ``docs/cancellation.md``;
the guarantees a client gets, in ``docs/protocol.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_agent.agents import Agent
from trio_agent.observability.events import session_events
from trio_agent.observability.metrics import NO_METRICS, SessionMetrics
from trio_agent.observability.trace import NO_TRACE, Tracer
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import (
    CloseCode,
    DoneStatus,
    ErrorCode,
    ResumeMessage,
    ResumeOffer,
    SessionPayload,
)
from trio_agent.server.cluster_link import ClusterLink
from trio_agent.server.connection import ClusterResume, Connection, HandOver
from trio_agent.server.cork import CorkableStream
from trio_agent.server.drain import SessionDrain
from trio_agent.server.frame_budget import FrameBudgetStream
from trio_agent.server.frame_handling import FrameHandling
from trio_agent.server.handoff import SessionHandoff
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.ratelimit import FrameRateLimit
from trio_agent.server.registry import RequestRegistry
from trio_agent.server.replay import FrameSort, ReplayBuffer
from trio_agent.server.request_runner import RequestRunner
from trio_agent.server.resume_book import AckLedger, Redeemed, ResumeBook
from trio_agent.server.resumption import refuse_resume, resume_answer
from trio_agent.server.session_end import SessionEnd, close_is_resumable
from trio_agent.server.writer import Writer

if TYPE_CHECKING:
    from trio_agent.server.config import ServerConfig
    from trio_agent.speech.synthesizers import Synthesizer

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT_S", "Session", "SessionEnd", "TakeOver"]

#: How long closing the WebSocket (sending the close frame, waiting for the peer's)
#: may take before the session gives up on the handshake and drops the connection.
CLOSE_HANDSHAKE_TIMEOUT_S = 1.0

#: How the server checks a RESUME's session and token (synchronously: of two
#: racing RESUMEs, exactly one wins). Returns the verdict, the session, the next token.
TakeOver = Callable[["Session", ResumeMessage], tuple[Redeemed, "Session | None", str | None]]

_SORTS = {FrameKind.STREAM: FrameSort.STREAM, FrameKind.AUDIO: FrameSort.AUDIO}


class Session(FrameHandling, SessionDrain, SessionHandoff):
    """One session. Start :meth:`run` in the server's nursery of sessions, then
    ``await serve(ws)`` in the connection's task.

    :param session_id: the session's id (every frame carries it).
    :param config: the server's settings.
    :param agents: agents by name.
    :param session_payload: the body of the SESSION frame (built once per server).
    :param metrics: where the session counts what it does (nowhere by default).
    :param trace: where the session's events go (:mod:`trio_agent.observability.trace`); off by default.
    :param synthesizer: what speaks a REQUEST with ``options.voice``; ``None``:
        speech is off (such a REQUEST gets ``ERROR UNKNOWN_VOICE``).
    :param book: the server's resume book; ``None`` (or ``resume_window_s == 0``):
        no resumption, the session ends with its connection.
    :param take_over: how a RESUME read here is checked (see :data:`TakeOver`).
    :param cluster: the node of a cluster this server is (``None``: a single
        process); the session tells it what it writes, and a RESUME is the node's
        to decide (``docs/cluster.md``).
    :param msg_id_prefix: before every ``msg_id`` (a session taken over from
        another node numbers its frames under its new epoch).
    """

    def __init__(
        self,
        *,
        session_id: str,
        config: ServerConfig,
        agents: Mapping[str, Agent],
        session_payload: SessionPayload,
        metrics: SessionMetrics = NO_METRICS,
        trace: Tracer = NO_TRACE,
        synthesizer: Synthesizer | None = None,
        book: ResumeBook | None = None,
        take_over: TakeOver | None = None,
        cluster: ClusterLink | None = None,
        msg_id_prefix: str = "",
        resume_token: str | None = None,
    ) -> None:
        self._synthesizer = synthesizer
        self.session_id = session_id
        self.config = config
        self._agents = agents
        self._book = book if config.resume_window_s > 0 else None
        self._take_over = take_over
        self.cluster = cluster if self._book is not None else None
        #: The node this session was handed to (cluster mode), once it has been.
        self.moved_to: str | None = None
        if self._book is not None:
            token = self._book.open(session_id, token=resume_token)
            offer = ResumeOffer(token=token, window_s=config.resume_window_s)
            session_payload = session_payload.model_copy(update={"resume": offer})
            if self.cluster is not None and resume_token is None:
                self.cluster.session_opened(session_id, token)
        self._session_payload = session_payload
        #: The frames written, for a resume to send again (``None``: no resumption).
        self.replay = (
            ReplayBuffer(config.resume_buffer_kib * 1024) if self._book is not None else None
        )
        self._acks = AckLedger()
        #: What the session tells: each event once, to the log, trace and metrics.
        self.events = session_events(trace.session(session_id), metrics)
        self.registry = RequestRegistry(max_running=config.max_concurrent_requests)
        self.lanes = OutboundLanes(
            stream_capacity=config.stream_lane_capacity,
            priority_capacity=config.priority_lane_capacity,
            priority_bytes=config.priority_lane_bytes,
            stream_bytes=config.stream_lane_bytes,
            audio_budget_ms=config.audio_queue_ms,
            fifo=config.lanes == "fifo",
        )
        self._msg_ids = MessageIds(msg_id_prefix)
        self._frame_rate = (
            FrameRateLimit(
                rate_per_s=config.rate_limit_per_s,
                burst=config.rate_limit_burst,
                close_after=config.rate_limit_close_after,
                now=trio.current_time(),
            )
            if config.rate_limit_per_s > 0
            else None
        )
        self._end: SessionEnd | None = None
        self._nursery: trio.Nursery | None = None
        #: The connection attached now, if any.
        self.connection: Connection | None = None
        self._connections_served = 0
        #: Set (and replaced) whenever the session ends or a connection comes or goes.
        self._changed = trio.Event()
        self._requests = RequestRunner(
            session_id=session_id,
            config=config,
            registry=self.registry,
            lanes=self.lanes,
            msg_ids=self._msg_ids,
            events=self.events,
            push_control=self._push_control,
            synthesizer=synthesizer,
        )
        #: ``AgentRequest.session_state``: what agents keep for this session.
        self.agent_state: dict[object, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def ended(self) -> bool:
        return self._end is not None

    @property
    def resumable(self) -> bool:
        return self._book is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The session's task: hold the request tasks until the session ends.

        It ends when the client closes with 1000, the idle timeout, a flood, a
        shutdown, or, once its connection is gone, when no RESUME comes within
        ``resume_window_s`` (at once when resumption is off). Returns only when
        every task the session started has finished (the wait for agents that
        ignore cancellation is bounded and shielded); never raises for anything
        the client does.
        """
        with logger.contextualize(session_id=self.session_id):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._wait_for_end()
                await self._close(nursery)
            if self._book is not None:
                self._book.close(self.session_id)
            end = self._end or SessionEnd("session over")
            if self.cluster is not None and self.moved_to is None:
                if end.code is CloseCode.SERVICE_RESTART:
                    # A draining node: the client resumes on another one.
                    self.cluster.session_detached(self.session_id, self.config.resume_window_s)
                else:
                    self.cluster.session_closed(self.session_id)
            self.events.session_closed(end.reason, end.code)

    async def _wait_for_end(self) -> None:
        """Wait until the session ends; end it when a detached session's window passes."""
        while self._end is None:
            changed = self._changed
            if (
                self.moved_to is not None
                and self.connection is None
                and not self.registry.live_count
            ):
                # Handed to another node, its connection here closed (4001), and
                # every request that ran here has its DONE in the store: nothing
                # of the session is left here.
                self._end_session(SessionEnd(f"moved to node {self.moved_to}"))
                return
            deadline = (
                self._book.deadline(self.session_id)
                if self._book is not None and self.connection is None
                else None
            )
            if deadline is None:
                await changed.wait()
                continue
            with trio.move_on_at(deadline):
                await changed.wait()
            if self.connection is None and self._book is not None:
                current = self._book.deadline(self.session_id)
                if current is not None and trio.current_time() >= current:
                    self._book.close(self.session_id)
                    self._end_session(SessionEnd("client gone"))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def begin_shutdown(
        self, reason: str = "server shutting down", code: CloseCode = CloseCode.GOING_AWAY
    ) -> None:
        """End every running request with ``DONE{status: shutdown}``, then close with
        ``code`` (1001; 1012 when a node drains, :meth:`drain`).

        Synchronous: the DONEs are queued on the priority lane right away and the
        reader is cancelled, so no REQUEST read after this starts anything.
        """
        with logger.contextualize(session_id=self.session_id):
            ending = self.registry.end_all(DoneStatus.SHUTDOWN, reason=reason)
            for record in ending:
                record.scope.cancel(reason=f"shutdown: {reason}")
                discarded = self.lanes.discard(record)
                self.events.scope_cancelled(record, discarded)
            # The DONEs still deferred go now too: the session is about to flush.
            ending += self._requests.take_deferred_dones()
            for record in ending:
                if not self._push_control(Outbound(FrameKind.DONE, record=record)):
                    break
            self._end_session(SessionEnd(reason, code, flush=True))

    def _end_session(self, end: SessionEnd) -> None:
        """Record why the session ends (the first reason wins) and stop the reader."""
        if self._end is None:
            self._end = end
            if self.connection is not None:
                self.connection.reader_scope.cancel(reason=end.reason)
            self._notify()

    def _connection_ends(self, connection: Connection, end: SessionEnd) -> None:
        """``connection`` ends; a lost one ends only itself when the session may be resumed."""
        cork = connection.cork
        if end.resumable and cork is not None and isinstance(cork.inner, FrameBudgetStream):
            # The server closed it for a flood or a bad frame: its decision, not a drop.
            end = replace(end, resumable=not cork.inner.exceeded)
        closed = connection.ws.closed
        if end.resumable and closed is not None and not close_is_resumable(closed.code):
            # The client's close frame was read (trio-websocket records its code
            # before it answers), even if the writer hit the closed socket first:
            # the client's decision to end wins over a lost connection.
            end = replace(
                end, reason=f"client closed the connection (code {closed.code})", resumable=False
            )
        connection.ends(end)
        if not (end.resumable and self._book is not None):
            self._end_session(end)

    async def _close(self, nursery: trio.Nursery) -> None:
        """The session has ended: let its connection close, then cancel its requests."""
        connection = self.connection
        if connection is not None:
            # The connection flushes (bounded) and sends its close frame (bounded).
            with trio.move_on_after(
                self.config.shutdown_grace_s + 2 * CLOSE_HANDSHAKE_TIMEOUT_S, shield=True
            ):
                await connection.gone.wait()
        self._requests.stop_queueing_dones()
        end = self._end or SessionEnd("session over")
        nursery.cancel_scope.cancel(reason=f"session closing: {end.reason}")
        self.events.nursery_cancelled(end.reason)
        if self._requests.running:
            grace_s = self.config.cleanup_grace_s
            self.events.waiting_for_request_tasks(grace_s)
            with trio.move_on_after(grace_s, shield=True) as grace:
                await self._requests.wait_all_ended()
            self.events.waited_for_request_tasks(
                timed_out=grace.cancelled_caught,
                still_running=self._requests.running,
                grace_s=grace_s,
            )

    # ------------------------------------------------------------------ connections

    async def serve(
        self,
        ws: WebSocketConnection,
        cork: CorkableStream | None = None,
        *,
        resuming: HandOver | None = None,
    ) -> HandOver | ClusterResume | None:
        """Serve the session on ``ws`` until the connection ends; called by its task.

        The connection's reader and writer run in a nursery of the calling task:
        when this returns, nothing of the connection is left running (the
        session's requests may be). With ``resuming``, the connection takes over
        (a displaced connection is closed with 4001 first), and RESUMED and the
        replay are written before the reader reads anything. Returns a
        :class:`HandOver` when the first frame read was an accepted RESUME of
        another session: the caller then serves that one on the same socket.
        """
        connection = Connection(ws, cork)
        with logger.contextualize(session_id=self.session_id):
            previous = self.connection
            if previous is not None:
                previous.ends(
                    SessionEnd("resumed elsewhere", CloseCode.RESUMED_ELSEWHERE, resumable=True)
                )
                # Bounded: the displaced connection sends its close frame (at most
                # 1 s) and stops its writer; its task is then done with the lanes.
                with trio.move_on_after(2 * CLOSE_HANDSHAKE_TIMEOUT_S + 1.0):
                    await previous.gone.wait()
            if self.connection is not None or (resuming is not None and self._end is not None):
                # It ended while the connection was being handed over (or the
                # displaced one would not go): the client must start over.
                await refuse_resume(
                    connection.ws,
                    session_id=self.session_id,
                    msg_id=self._msg_ids.next_id(),
                    ref=resuming.message.msg_id if resuming is not None else None,
                    code=ErrorCode.RESUME_UNKNOWN,
                    text="this session has ended: start over",
                )
                return None
            self.connection = connection
            self._notify()
            try:
                await self._serve(connection, resuming)
            finally:
                connection.gone.set()
                self._detach(connection)
        return connection.handover

    async def _serve(self, connection: Connection, resuming: HandOver | None) -> None:
        if self._connections_served == 0:
            self.events.session_opened(str(connection.ws.remote))
            if resuming is None:  # (one taken over from another node had its SESSION there)
                if self.cluster is not None:
                    # The client may RESUME on another node as soon as it has the
                    # SESSION frame: the store must know the session by then.
                    await self.cluster.session_stored(self.session_id)
                self._push_control(self._session_frame())
        self._connections_served += 1
        writer = Writer(
            connection.ws,
            session_id=self.session_id,
            lanes=self.lanes,
            registry=self.registry,
            msg_ids=self._msg_ids,
            events=self.events,
            batch_frames=self.config.write_batch_frames,
            cork=connection.cork,
            end_session=lambda end: self._connection_ends(connection, end),
            on_written=self._frame_written if self.replay is not None else None,
        )
        async with trio.open_nursery() as nursery:
            if resuming is not None and not await self._resume(connection, resuming):
                nursery.cancel_scope.cancel(reason="connection lost while resuming")
                return
            self.lanes.writer_back()
            nursery.start_soon(writer.run, name=f"writer {self.session_id}")
            with connection.reader_scope:
                if self._end is None:  # (a session shut down as it opened reads nothing)
                    await self._read_loop(connection)
            await self._close_connection(connection, nursery)

    async def _resume(self, connection: Connection, resuming: HandOver) -> bool:
        """Write RESUMED and the replay, before the reader reads anything: an INTERRUPT
        read right after RESUMED is then acknowledged after the replayed frames."""
        assert self.replay is not None
        answer = resume_answer(
            resuming.message,
            session_id=self.session_id,
            token=resuming.token,
            window_s=self.config.resume_window_s,
            interrupts=self._acks.take_unconfirmed(),
            registry=self.registry,
            replay=self.replay,
            lanes=self.lanes,
            msg_ids=self._msg_ids,
            push_control=self._push_control,
        )
        self.events.session_resumed(len(answer.frames) - 1, answer.gaps)
        try:
            for frame in answer.frames:
                await connection.ws.send_message(frame)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            self._connection_ends(
                connection, SessionEnd("connection lost while resuming", resumable=True)
            )
            return False
        return True

    def _detach(self, connection: Connection) -> None:
        """``connection`` has stopped serving: when the session goes on, it waits for a RESUME."""
        if self.connection is not connection:
            return
        self.connection = None
        # Its ACKs may not have arrived (RESUMED lists them); the control frames
        # still queued answered a connection that is gone.
        self._acks.connection_dropped()
        self.lanes.drop_control()
        if self._end is None and self._book is not None:
            end = connection.end or SessionEnd("connection lost")
            if end.code is not CloseCode.RESUMED_ELSEWHERE:
                self._book.detached(
                    self.session_id, deadline=trio.current_time() + self.config.resume_window_s
                )
                self.events.connection_lost(end.reason, self.config.resume_window_s)
                if self.cluster is not None:
                    self.cluster.session_detached(self.session_id, self.config.resume_window_s)
        if self.moved_to is not None and self._end is None:
            self._start_headless_writer()
        self._notify()

    async def _close_connection(self, connection: Connection, nursery: trio.Nursery) -> None:
        """Close this connection: a session's end flushes and sends its close code;
        a displaced connection gets 4001; a lost one nothing (it is gone)."""
        end = self._end if self._end is not None else connection.end
        if end is None:
            end = SessionEnd("reader stopped", CloseCode.NORMAL)
        if self._end is not None and end.flush:
            # Let the writer send what is queued (the shutdown DONEs among it), but
            # no longer than the grace period: a client that does not read cannot
            # hold the session open.
            with trio.move_on_after(self.config.shutdown_grace_s):
                await self.lanes.wait_written()
        if self._end is not None:
            self._requests.stop_queueing_dones()
        if end.code is not None:
            # Bounded and shielded: the close frame is polite, not essential, and
            # must not be skipped because the server is being cancelled around us.
            with trio.move_on_after(CLOSE_HANDSHAKE_TIMEOUT_S, shield=True):
                await connection.ws.aclose(code=end.code, reason=end.reason[:120])
        nursery.cancel_scope.cancel(reason=f"connection closing: {end.reason}")

    def _frame_written(self, frame: Outbound, text: str | bytes) -> None:
        """Keep a written frame of a request for a resume to send again (and, in a
        cluster, mirror it to the store, unless it came from there: a relayed frame)."""
        record = frame.record
        if self.replay is None or record is None:
            return
        if frame.kind is FrameKind.DONE:
            sort, seq = FrameSort.DONE, -1
        elif (kind := _SORTS.get(frame.kind)) is not None:
            sort, seq = kind, frame.seq
        else:
            return
        self.replay.written(record.request_id, sort, seq, text)
        if self.cluster is not None and (record.runs_on is None or frame.data is None):
            # (A relayed frame came from the store: it is there already.)
            frames = record.frames_written if sort is FrameSort.DONE else -1
            self.cluster.frame_written(
                self.session_id, record.request_id, sort, seq, text, frames=frames
            )
            if sort is FrameSort.DONE and record.runs_on is None:
                self._share_agent_state(self.cluster)
        if sort is FrameSort.DONE and self.moved_to is not None:
            self._notify()  # (the session may be over here: _wait_for_end)

    # ------------------------------------------------------------------ reader

    async def _read_loop(self, connection: Connection) -> None:
        idle_timeout = self.config.idle_timeout_s or math.inf
        while True:
            with trio.move_on_after(idle_timeout) as idle:
                try:
                    # On a served socket this reads it in this task (server/inbound.py):
                    # no reader task hands the message over, so an INTERRUPT is handled
                    # in the scheduler pass that received it.
                    raw = await connection.ws.get_message()
                except ConnectionClosed as closed:
                    # Handled here, where it is raised: it must never escape into
                    # the connection's nursery, where it would arrive wrapped in an
                    # ExceptionGroup that a plain `except ConnectionClosed` misses.
                    # A close with 1000 is the client's decision to end; a broken
                    # connection (no close frame: 1006) may be resumed.
                    why = closed.reason
                    code = why.code if why is not None else None
                    self._connection_ends(
                        connection,
                        SessionEnd(
                            f"client closed the connection (code {code})",
                            resumable=close_is_resumable(code),
                        ),
                    )
                    return
            if idle.cancelled_caught:
                self._end_session(
                    SessionEnd(
                        f"idle for {self.config.idle_timeout_s:g} s",
                        CloseCode.GOING_AWAY,
                        flush=True,
                    )
                )
                return
            connection.frames_read += 1
            try:
                self._handle_frame(raw, connection)
            except Exception as exc:
                # A bug of ours must not end the session silently, nor the server.
                self.events.frame_handling_failed(exc)
                self._send_error(ErrorCode.INTERNAL_ERROR, "the server failed to handle this frame")
            if self._end is not None or connection.end is not None:
                return
