"""One WebSocket connection: a nursery, a reader, a writer, and a cancel scope per request.

This file is the cancel-scope tree of a session. Read it with
:mod:`trio_agent.server` (the tree above it) and :mod:`trio_agent.registry` (the
decisions it carries out)::

    server nursery  (AgentServer.run)
    └── Session.run                      <- this task is the reader
        └── session nursery
            ├── writer task              <- the only task that sends on the socket
            ├── request task "r1"
            │   └── CancelScope(relative_deadline=timeout)   <- INTERRUPT cancels this
            │       └── agent(request, stream)
            └── request task "r2" ...

Rules this code keeps, each one a guarantee of ``docs/protocol.md``:

* The reader never awaits while handling a frame. REQUEST spawns a task, INTERRUPT
  cancels scopes and queues frames, HEARTBEAT queues a reply: all synchronous, so a
  busy stream can never delay the handling of an INTERRUPT.
* An INTERRUPT cancels the request's scope *directly* (with a reason naming the
  INTERRUPT), drops the request's queued STREAM frames, and queues the ACK and then
  the request's DONE on the priority lane, in that order, before the reader reads
  another frame. There is no flag for the agent to poll.
* Exactly one DONE per request: the registry's first terminal decision wins, and
  only the task that wins it queues a DONE.
* A DONE is rendered by the writer when it is about to send it, so ``frames`` counts
  the STREAM frames that really reached the socket.
* Everything the session started lives in its nursery, so when :meth:`Session.run`
  returns no task of the session is left.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from loguru import logger
from pydantic import BaseModel
from trio_websocket import ConnectionClosed, WebSocketConnection

from .agents import Agent, AgentError, AgentRequest
from .cork import CorkableStream
from .lanes import FrameKind, LaneOverflow, Outbound, OutboundLanes
from .protocol import (
    CloseCode,
    DoneMessage,
    DonePayload,
    DoneStatus,
    ErrorCode,
    ErrorInfo,
    ErrorMessage,
    ErrorPayload,
    HeartbeatMessage,
    InterruptAckMessage,
    InterruptAckPayload,
    InterruptMessage,
    ProtocolError,
    RequestMessage,
    ServerHeartbeatMessage,
    SessionMessage,
    SessionPayload,
    StreamFrameEncoder,
    encode,
    now_ms,
    parse_client_message,
)
from .registry import AdmissionRefused, RequestPhase, RequestRecord, RequestRegistry

if TYPE_CHECKING:
    from .config import ServerConfig

#: How long closing the WebSocket (sending the close frame, waiting for the peer's)
#: may take before the session gives up on the handshake and drops the connection.
CLOSE_HANDSHAKE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class SessionEnd:
    """Why a session ends, and how.

    ``code`` is the close code to send, or ``None`` when the connection is already
    gone. ``flush`` asks to write what is queued (bounded by the shutdown grace)
    before closing.
    """

    reason: str
    code: CloseCode | None = None
    flush: bool = False


class Session:
    """One client connection. Create it with an accepted WebSocket, then ``await run()``.

    :param ws: the accepted connection; the session owns it from here on.
    :param config: the server's settings.
    :param agents: agents by name.
    :param session_payload: the body of the SESSION frame (built once per server).
    :param cork: the stream under ``ws``, if it is a :class:`CorkableStream`: the
        writer then sends frames in batches.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        session_id: str,
        config: ServerConfig,
        agents: Mapping[str, Agent],
        session_payload: SessionPayload,
        cork: CorkableStream | None = None,
    ) -> None:
        self.ws = ws
        self._cork = cork
        self.session_id = session_id
        self.config = config
        self._agents = agents
        self._session_payload = session_payload
        self.registry = RequestRegistry(max_running=config.max_concurrent_requests)
        self.lanes = OutboundLanes(
            stream_capacity=config.stream_lane_capacity,
            priority_capacity=config.priority_lane_capacity,
            fifo=config.lanes == "fifo",
        )
        self._msg_ids = itertools.count()
        self._end: SessionEnd | None = None
        self._reader_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        #: Set once the session stops sending: request tasks ending after that
        #: queue no DONE (there is nobody to read it).
        self._closing = False
        self._request_tasks = 0
        self._request_tasks_gone = trio.Event()
        self._request_tasks_gone.set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until the client leaves, the session times out or
        :meth:`begin_shutdown` is called. Returns only when every task it started has
        finished; never raises for anything the client does."""
        with logger.contextualize(session_id=self.session_id):
            logger.info("session opened", remote=str(self.ws.remote))
            self._push_control(self._session_frame())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop, name=f"writer {self.session_id}")
                with self._reader_scope:
                    await self._read_loop()
                await self._close(nursery)
            end = self._end or SessionEnd("reader stopped")
            logger.info("session closed", reason=end.reason, code=end.code)

    def begin_shutdown(self, reason: str = "server shutting down") -> None:
        """End every running request with ``DONE{status: shutdown}``, then close with 1001.

        Synchronous: the DONEs are queued on the priority lane right away and the
        reader is cancelled, so no REQUEST read after this starts anything.
        """
        with logger.contextualize(session_id=self.session_id):
            for record in self.registry.end_all(DoneStatus.SHUTDOWN, reason=reason):
                # Cancel before discarding: see _interrupt.
                record.scope.cancel(reason=f"shutdown: {reason}")
                self.lanes.discard(record)
                if not self._push_control(Outbound(FrameKind.DONE, record=record)):
                    break
            self._end_session(SessionEnd(reason, CloseCode.GOING_AWAY, flush=True))

    def _end_session(self, end: SessionEnd) -> None:
        """Record why the session ends (the first reason wins) and stop the reader."""
        if self._end is None:
            self._end = end
            self._reader_scope.cancel(reason=end.reason)

    async def _close(self, nursery: trio.Nursery) -> None:
        end = self._end or SessionEnd("reader stopped", CloseCode.NORMAL)
        if end.flush:
            # Let the writer send what is queued (the shutdown DONEs among it), but
            # no longer than the grace period: a client that does not read cannot
            # hold the session open.
            with trio.move_on_after(self.config.shutdown_grace_s):
                await self.lanes.wait_written()
        self._closing = True
        if end.code is not None:
            # Bounded and shielded: the close frame is polite, not essential, and
            # must not be skipped because the server is being cancelled around us.
            with trio.move_on_after(CLOSE_HANDSHAKE_TIMEOUT_S, shield=True):
                await self.ws.aclose(code=end.code, reason=end.reason[:120])
        nursery.cancel_scope.cancel(reason=f"session closing: {end.reason}")
        if self._request_tasks:
            with trio.move_on_after(self.config.cleanup_grace_s, shield=True) as grace:
                await self._request_tasks_gone.wait()
            if grace.cancelled_caught:
                logger.warning(
                    "an agent ignores cancellation; the session cannot finish until it returns",
                    request_tasks=self._request_tasks,
                    grace_s=self.config.cleanup_grace_s,
                )

    # ------------------------------------------------------------------ reader

    async def _read_loop(self) -> None:
        idle_timeout = self.config.idle_timeout_s or math.inf
        while True:
            with trio.move_on_after(idle_timeout) as idle:
                try:
                    raw = await self.ws.get_message()
                except ConnectionClosed as closed:
                    # Handled here, where it is raised: it must never escape into
                    # the session nursery, where it would arrive wrapped in an
                    # ExceptionGroup that a plain `except ConnectionClosed` misses.
                    why = closed.reason
                    code = why.code if why is not None else None
                    self._end_session(SessionEnd(f"client closed the connection (code {code})"))
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
            try:
                self._handle_frame(raw)
            except Exception as exc:
                # A bug of ours must not end the session silently, nor the server.
                logger.opt(exception=exc).error("internal error while handling a frame")
                self._send_error(ErrorCode.INTERNAL_ERROR, "the server failed to handle this frame")
            if self._end is not None:
                return

    def _handle_frame(self, raw: str | bytes) -> None:
        """Act on one client frame. Synchronous on purpose: see the module docstring."""
        if isinstance(raw, bytes):
            self._send_error(
                ErrorCode.INVALID_MESSAGE,
                "binary messages are not part of protocol v1; send JSON text",
            )
            return
        logger.trace("frame read", frame=raw[:200])
        try:
            message = parse_client_message(raw)
        except ProtocolError as exc:
            logger.debug("protocol error", code=str(exc.code), detail=exc.message)
            self._send_error(exc.code, exc.message, ref=exc.ref, request_id=exc.request_id)
            return
        if message.session_id is not None and message.session_id != self.session_id:
            self._send_error(
                ErrorCode.INVALID_MESSAGE,
                "session_id does not name this session",
                ref=message.msg_id,
                request_id=message.request_id,
            )
            return
        if isinstance(message, RequestMessage):
            self._start_request(message)
        elif isinstance(message, InterruptMessage):
            self._interrupt(message, read_at=trio.current_time())
        elif isinstance(message, HeartbeatMessage):
            self._push_control(
                ServerHeartbeatMessage(
                    msg_id=self._next_msg_id(),
                    session_id=self.session_id,
                    ref=message.msg_id,
                    ts=now_ms(),
                )
            )

    def _start_request(self, message: RequestMessage) -> None:
        payload = message.payload
        ref, request_id = message.msg_id, message.request_id
        size = len(payload.input.encode("utf-8"))
        if size > self.config.max_input_bytes:
            self._send_error(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"input is {size} bytes; the limit is {self.config.max_input_bytes}",
                ref=ref,
                request_id=request_id,
            )
            return
        name = payload.agent or self.config.default_agent
        agent = self._agents.get(name)
        entry = self._session_payload.agents.get(name)
        if agent is None or (entry is not None and not entry.available):
            why = (
                entry.unavailable_reason if entry is not None and entry.unavailable_reason else None
            )
            self._send_error(
                ErrorCode.UNKNOWN_AGENT,
                f"agent {name[:64]!r} is not available here"
                + (f": {why}" if why else f" (agents: {', '.join(sorted(self._agents))})"),
                ref=ref,
                request_id=request_id,
            )
            return
        cap = self.config.request_timeout_cap_s
        timeout = min(payload.timeout_s, cap) if payload.timeout_s is not None else cap
        # The request's own cancel scope. Its deadline is relative, so the clock
        # starts when the request task enters it. An INTERRUPT may cancel it even
        # before that: the agent then never runs.
        scope = trio.CancelScope(relative_deadline=timeout)
        try:
            record = self.registry.admit(request_id, agent=name, scope=scope, ref=ref)
        except AdmissionRefused as refused:
            self._send_error(refused.code, refused.message, ref=ref, request_id=request_id)
            return
        request = AgentRequest(
            request_id=request_id,
            input=payload.input,
            options=payload.options,
            session_id=self.session_id,
        )
        assert self._nursery is not None
        if not self._request_tasks:
            self._request_tasks_gone = trio.Event()
        self._request_tasks += 1
        self._nursery.start_soon(
            self._run_request, record, agent, request, timeout, name=f"request {request_id}"
        )

    def _interrupt(self, message: InterruptMessage, *, read_at: float) -> None:
        reason = message.payload.reason
        decision = self.registry.interrupt(message.request_id, reason=reason, msg_id=message.msg_id)
        discarded = 0
        for record in decision.cut:
            # Cancel first: an agent parked waiting for stream room then wakes with
            # Cancelled. Discarding first would make room and wake it normally, to
            # find its request ended (ClosedResourceError, logged as a failure).
            record.scope.cancel(reason=f"INTERRUPT {message.msg_id} ({reason})")
            discarded += self.lanes.discard(record)
        ack = InterruptAckMessage(
            msg_id=self._next_msg_id(),
            session_id=self.session_id,
            request_id=message.request_id,
            ref=message.msg_id,
            ts=now_ms(),
            payload=InterruptAckPayload(
                interrupted=decision.interrupted_ids,
                interrupted_count=len(decision.cut),
                reason=reason,
                targets=decision.targets,
            ),
        )
        # The ACK first, then the DONE of each cut request: a client that sees the
        # ACK knows the DONEs are next, and nothing else about those requests.
        if not self._push_control(Outbound(FrameKind.CONTROL, encode(ack), read_at=read_at)):
            return
        for record in decision.cut:
            if not self._push_control(Outbound(FrameKind.DONE, record=record)):
                return
        logger.info(
            "interrupt processed",
            interrupt=message.msg_id,
            target=message.request_id or "*",
            interrupted=decision.interrupted_ids,
            discarded_frames=discarded,
            reason=reason,
        )

    # ------------------------------------------------------------------ requests

    async def _run_request(
        self, record: RequestRecord, agent: Agent, request: AgentRequest, timeout_s: float
    ) -> None:
        with logger.contextualize(request_id=record.request_id):
            logger.info("request started", agent=record.agent, timeout_s=timeout_s)
            error: ErrorInfo | None = None
            try:
                with record.scope:
                    try:
                        await agent(request, _RequestStream(record, self))
                    except trio.Cancelled as cancelled:
                        # Who cut us and why, straight from Trio: "explicit" with the
                        # INTERRUPT's msg id, "deadline" for a timeout, "nursery" when
                        # the session is closing.
                        logger.debug(
                            "request cancelled",
                            source=cancelled.source,
                            cancel_reason=cancelled.reason,
                            source_task=cancelled.source_task,
                        )
                        raise
            except AgentError as exc:
                error = ErrorInfo(code=exc.code, message=exc.message)
            except Exception as exc:
                # An agent's failure ends its request, never the session.
                logger.opt(exception=exc).warning("agent raised")
                error = ErrorInfo(
                    code=ErrorCode.AGENT_ERROR, message=f"{type(exc).__name__}: {exc}"[:500]
                )
            finally:
                self._settle(record, error, timeout_s)
                self._request_tasks -= 1
                if not self._request_tasks:
                    self._request_tasks_gone.set()

    def _settle(self, record: RequestRecord, error: ErrorInfo | None, timeout_s: float) -> None:
        """Decide how a request ended once its task is done, and queue its DONE.

        If an INTERRUPT or shutdown already decided (the usual case when the scope
        was cancelled), ``registry.end`` returns False and nothing more is sent.
        """
        if self._closing:
            if record.phase is RequestPhase.RUNNING:
                logger.info("request abandoned", why="session closed")
            return
        if error is not None:
            status, reason = DoneStatus.FAILED, error.message
        elif record.scope.cancel_called:
            # Nobody cancels a RUNNING request's scope without ending it first
            # except its own deadline.
            status, reason = DoneStatus.TIMEOUT, f"timeout_s={timeout_s:g} elapsed"
        else:
            status, reason = DoneStatus.COMPLETED, None
        if self.registry.end(record, status, reason=reason, error=error):
            # Behind the request's own STREAM frames, never ahead of them.
            self.lanes.push_stream_terminal(Outbound(FrameKind.DONE, record=record))

    # ------------------------------------------------------------------ writer

    async def _write_loop(self) -> None:
        """Take frames from the lanes, priority first, and send them. The only sender.

        With a :class:`~trio_agent.cork.CorkableStream` under the connection, the
        frames the writer takes one after another leave in one socket write: a
        *batch*. A batch ends when the lanes are empty, when it holds
        ``config.write_batch_frames``, right after any frame that is not a STREAM
        frame (so an INTERRUPT_ACK is never held back), and right after the first
        STREAM frame of a request (so a new reply's first words are not either).
        The lanes are still read one frame at a time, so an ACK queued while a
        batch is being built is the next frame in it. A STREAM frame counts as
        written once it is in the batch: the batch reaches the socket whole and in
        order, or the connection is gone, so a DONE counts exactly the STREAM
        frames ahead of it on the wire.
        """
        lanes = self.lanes
        most = self.config.write_batch_frames
        cork = self._cork if most > 1 else None
        batch: list[Outbound] = []
        try:
            while True:
                frame = await lanes.next_frame()
                if cork is not None and not batch:
                    cork.cork()
                text = frame.text if frame.text is not None else self._render_done(frame)
                await self.ws.send_message(text)
                first = False
                if frame.kind is FrameKind.STREAM:
                    assert frame.record is not None
                    frame.record.frames_written += 1
                    first = frame.record.frames_written == 1
                batch.append(frame)
                if (
                    cork is None
                    or frame.kind is not FrameKind.STREAM
                    or first
                    or not lanes.queued
                    or len(batch) >= most
                ):
                    if cork is not None:
                        await cork.flush()
                    lanes.frame_written()
                    self._batch_written(batch)
                    batch = []
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            # (A flush raises the stream's own errors: trio-websocket only sees the cork.)
            self._end_session(SessionEnd("connection closed while writing"))
        except Exception as exc:
            logger.opt(exception=exc).error("writer failed")
            self._end_session(SessionEnd("internal error in the writer", CloseCode.INTERNAL_ERROR))

    def _batch_written(self, batch: list[Outbound]) -> None:
        """Book-keeping once a batch is on the socket: free the ids of DONE requests."""
        for frame in batch:
            record = frame.record
            if frame.kind is FrameKind.DONE:
                assert record is not None
                self.registry.done_written(record)
                with logger.contextualize(request_id=record.request_id):
                    logger.info(
                        "request ended",
                        status=str(record.status),
                        frames=record.frames_written,
                        reason=record.reason,
                    )
            elif frame.read_at is not None:
                logger.info(
                    "interrupt acknowledged",
                    latency_us=round((trio.current_time() - frame.read_at) * 1e6),
                )

    def _render_done(self, frame: Outbound) -> str:
        record = frame.record
        assert record is not None
        assert record.status is not None
        return encode(
            DoneMessage(
                msg_id=self._next_msg_id(),
                session_id=self.session_id,
                request_id=record.request_id,
                ref=record.ref,
                ts=now_ms(),
                payload=DonePayload(
                    status=record.status,
                    interrupted=record.interrupted,
                    reason=record.reason,
                    frames=record.frames_written,
                    error=record.error,
                    cancelled_by=record.cancelled_by,
                ),
            )
        )

    # ------------------------------------------------------------------ frames

    def _next_msg_id(self) -> str:
        return f"s{next(self._msg_ids)}"

    def _session_frame(self) -> SessionMessage:
        return SessionMessage(
            msg_id=self._next_msg_id(),
            session_id=self.session_id,
            ts=now_ms(),
            payload=self._session_payload,
        )

    def _push_control(self, frame: Outbound | BaseModel) -> bool:
        """Queue a control frame on the priority lane; on overflow, end the session.

        Returns ``False`` when the session is ending because of it.
        """
        if isinstance(frame, BaseModel):
            frame = Outbound(FrameKind.CONTROL, encode(frame))
        try:
            self.lanes.push_priority(frame)
        except LaneOverflow as exc:
            logger.warning("closing a session that does not read", detail=str(exc))
            self._end_session(
                SessionEnd("client does not read its control frames", CloseCode.POLICY_VIOLATION)
            )
            return False
        return True

    def _send_error(
        self,
        code: ErrorCode,
        message: str,
        *,
        ref: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self._push_control(
            ErrorMessage(
                msg_id=self._next_msg_id(),
                session_id=self.session_id,
                request_id=request_id,
                ref=ref,
                ts=now_ms(),
                payload=ErrorPayload(code=code, message=message),
            )
        )


class _RequestStream:
    """The :class:`~trio_agent.agents.ResponseStream` a request's agent writes into."""

    __slots__ = ("_encode", "_lanes", "_record", "_session")

    def __init__(self, record: RequestRecord, session: Session) -> None:
        self._record = record
        self._session = session
        self._lanes = session.lanes
        self._encode = StreamFrameEncoder(session.session_id, record.request_id)

    @property
    def request_id(self) -> str:
        return self._record.request_id

    async def send(self, delta: str) -> None:
        if not isinstance(delta, str):
            raise TypeError(f"a delta must be a str, not {type(delta).__name__}")
        # Backpressure, and an interrupt point.
        await self._lanes.wait_for_stream_room(self._record)
        record = self._record
        if record.phase is not RequestPhase.RUNNING:
            # Cut while this task was already woken to take room: its scope is
            # cancelled, so the Cancelled lands here. Only a shielded agent gets past.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise trio.ClosedResourceError(
                f"request {record.request_id} has ended ({record.status}); nothing more is sent for it"
            )
        # Render before counting: text that cannot be encoded raises here and uses no seq.
        text = self._encode(
            msg_id=self._session._next_msg_id(), ts=now_ms(), seq=record.frames_queued, delta=delta
        )
        record.frames_queued += 1
        self._lanes.push_stream(Outbound(FrameKind.STREAM, text, record))
