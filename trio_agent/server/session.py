"""One WebSocket connection: a nursery, a reader, a writer, and a cancel scope per request.

This file is the cancel-scope tree of a session. Read it with
:mod:`trio_agent.server.agent_server` (the tree above it) and :mod:`trio_agent.server.registry` (the
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
* An agent may add fields to its DONE, ask that an interrupted DONE wait for its
  cleanup, and be called back as its DONE is sent with exactly what the client
  received (:class:`~trio_agent.agents.ResponseStream`). A deferred DONE is queued by
  the request task when the agent returns, and by shutdown if that comes first.
* Everything the session started lives in its nursery, so when :meth:`Session.run`
  returns no task of the session is left.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import trio
from loguru import logger
from pydantic import BaseModel
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_agent.agents import (
    Agent,
    AgentError,
    AgentRequest,
    AgentTimeout,
    RequestOutcome,
    ResponseStream,
    json_fields,
)
from trio_agent.observability.metrics import NO_METRICS, SessionMetrics
from trio_agent.observability.trace import NO_TRACE, Tracer
from trio_agent.protocol.audio import AudioFrameEncoder, decode_audio_frame
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.framing import websocket_frame
from trio_agent.protocol.messages import (
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
from trio_agent.server.cork import CorkableStream
from trio_agent.server.lanes import LaneOverflow, Outbound, OutboundLanes
from trio_agent.server.ratelimit import FrameRateLimit, Verdict
from trio_agent.server.registry import (
    AdmissionRefused,
    RequestPhase,
    RequestRecord,
    RequestRegistry,
)
from trio_agent.speech.stage import Speaker, SpokenResponseStream
from trio_agent.speech.timeline import (
    SpeechOptionError,
    SpeechOptions,
    SpeechTimeline,
    SpokenWord,
    speech_options,
)

if TYPE_CHECKING:
    from trio_agent.server.config import ServerConfig
    from trio_agent.speech.synthesizers import Synthesizer

#: An agent as it may really be: returning anything.
_AnyAgent = Callable[[AgentRequest, ResponseStream], Awaitable[object]]

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
    :param metrics: where the session counts what it does (nowhere by default).
    :param trace: where the session's events go (:mod:`trio_agent.observability.trace`); off by default.
    :param cork: the stream under ``ws``, if it is a :class:`CorkableStream`: the
        writer then sends frames in batches.
    :param synthesizer: what speaks a REQUEST with ``options.voice``; ``None``:
        speech is off (such a REQUEST gets ``ERROR UNKNOWN_VOICE``).
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        session_id: str,
        config: ServerConfig,
        agents: Mapping[str, Agent],
        session_payload: SessionPayload,
        metrics: SessionMetrics = NO_METRICS,
        trace: Tracer = NO_TRACE,
        cork: CorkableStream | None = None,
        synthesizer: Synthesizer | None = None,
    ) -> None:
        self.ws = ws
        self._synthesizer = synthesizer
        self._cork = cork
        self.metrics = metrics
        self.session_id = session_id
        self.config = config
        self._agents = agents
        self._session_payload = session_payload
        self.registry = RequestRegistry(max_running=config.max_concurrent_requests)
        self.lanes = OutboundLanes(
            stream_capacity=config.stream_lane_capacity,
            priority_capacity=config.priority_lane_capacity,
            audio_budget_ms=config.audio_queue_ms,
            fifo=config.lanes == "fifo",
        )
        self._msg_ids = itertools.count()
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
        self._reader_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        #: Set once the session stops sending: request tasks ending after that
        #: queue no DONE (there is nobody to read it).
        self._closing = False
        self._request_tasks = 0
        self._request_tasks_gone = trio.Event()
        self._request_tasks_gone.set()
        #: Interrupted requests whose DONE waits for their agent (``defer_done``).
        self._deferred_dones: set[RequestRecord] = set()
        #: ``AgentRequest.session_state``: what agents keep for this session.
        self.agent_state: dict[object, Any] = {}
        self.trace = trace.session(session_id)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until the client leaves, the session times out or
        :meth:`begin_shutdown` is called. Returns only when every task it started has
        finished; never raises for anything the client does."""
        with logger.contextualize(session_id=self.session_id):
            logger.info("session opened", remote=str(self.ws.remote))
            self.trace.session_opened()
            self._push_control(self._session_frame())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop, name=f"writer {self.session_id}")
                with self._reader_scope:
                    await self._read_loop()
                await self._close(nursery)
            end = self._end or SessionEnd("reader stopped")
            logger.info("session closed", reason=end.reason, code=end.code)
            self.trace.session_closed(end.reason)

    def begin_shutdown(self, reason: str = "server shutting down") -> None:
        """End every running request with ``DONE{status: shutdown}``, then close with 1001.

        Synchronous: the DONEs are queued on the priority lane right away and the
        reader is cancelled, so no REQUEST read after this starts anything.
        """
        with logger.contextualize(session_id=self.session_id):
            ending = self.registry.end_all(DoneStatus.SHUTDOWN, reason=reason)
            for record in ending:
                record.scope.cancel(reason=f"shutdown: {reason}")
                discarded = self.lanes.discard(record)
                self.trace.scope_cancelled(record, discarded)
            # The DONEs still deferred go now too: the session is about to flush.
            ending += self._deferred_dones
            self._deferred_dones.clear()
            for record in ending:
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
        self.trace.nursery_cancelled(end.reason)
        if self._request_tasks:
            self.trace.cleanup_started("wait for request tasks", self.config.cleanup_grace_s)
            with trio.move_on_after(self.config.cleanup_grace_s, shield=True) as grace:
                await self._request_tasks_gone.wait()
            self.trace.cleanup_ended("wait for request tasks", grace.cancelled_caught)
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
        if self._frame_rate is not None and not self._within_rate(raw):
            return
        if isinstance(raw, bytes):
            self._refuse_binary(raw)
            return
        logger.trace("frame read", frame=raw[:200])
        try:
            message = parse_client_message(raw)
        except ProtocolError as exc:
            logger.debug("protocol error", code=str(exc.code), detail=exc.message)
            self._send_error(exc.code, exc.message, ref=exc.ref, request_id=exc.request_id)
            return
        self.trace.frame_read(message)
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

    def _refuse_binary(self, raw: bytes) -> None:
        """A binary message: only the server sends them (AUDIO), so it is refused."""
        try:
            header, _ = decode_audio_frame(raw)
        except ProtocolError as exc:
            detail, request_id = exc.message, exc.request_id
        else:
            detail, request_id = "a client may not send AUDIO", header.request_id
        self._send_error(
            ErrorCode.INVALID_MESSAGE,
            f"binary messages are server-to-client AUDIO only; send JSON text ({detail})",
            request_id=request_id,
        )

    def _within_rate(self, raw: str | bytes) -> bool:
        """Apply the frame rate limit (:mod:`trio_agent.server.ratelimit`); False: skip ``raw``."""
        assert self._frame_rate is not None
        verdict = self._frame_rate.check(trio.current_time())
        if verdict is Verdict.ACCEPT:
            return True
        if verdict is Verdict.CLOSE:
            logger.warning("closing a session that floods", refused=self._frame_rate.refused_total)
            self._end_session(
                SessionEnd("client exceeded the frame rate limit", CloseCode.POLICY_VIOLATION)
            )
            return False
        if self._frame_rate.refused_in_flood == 1:
            logger.info("rate limiting a client", rate_per_s=self.config.rate_limit_per_s)
        ref, request_id = _references(raw)
        self._send_error(
            ErrorCode.RATE_LIMITED,
            f"more than {self.config.rate_limit_per_s:g} frames/s; this frame was not acted on",
            ref=ref,
            request_id=request_id,
        )
        return False

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
        synthesizer = self._synthesizer
        try:
            speech = speech_options(
                payload.options,
                voices=synthesizer.voices if synthesizer is not None else (),
                default_voice=synthesizer.default_voice if synthesizer is not None else None,
            )
        except SpeechOptionError as exc:
            self._send_error(exc.code, exc.message, ref=ref, request_id=request_id)
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
        if speech is not None:
            assert synthesizer is not None
            record.speech = SpeechTimeline(sample_rate=synthesizer.sample_rate)
        request = AgentRequest(
            request_id=request_id,
            input=payload.input,
            options=payload.options,
            session_id=self.session_id,
            session_state=self.agent_state,
        )
        assert self._nursery is not None
        if not self._request_tasks:
            self._request_tasks_gone = trio.Event()
        self._request_tasks += 1
        self._nursery.start_soon(
            self._run_request,
            record,
            agent,
            request,
            timeout,
            speech,
            name=f"request {request_id}",
        )

    def _interrupt(self, message: InterruptMessage, *, read_at: float) -> None:
        reason = message.payload.reason
        decision = self.registry.interrupt(message.request_id, reason=reason, msg_id=message.msg_id)
        played_ms = message.payload.played_ms
        discarded = 0
        for record in decision.cut:
            if record.speech is not None and played_ms is not None and message.request_id:
                record.speech.played_ms = played_ms
            # Cancel first: an agent parked waiting for stream room then wakes with
            # Cancelled, rather than being woken for the room discard() makes.
            record.scope.cancel(reason=f"INTERRUPT {message.msg_id} ({reason})")
            dropped = self.lanes.discard(record)
            discarded += dropped
            self.trace.scope_cancelled(record, dropped)
        self.metrics.interrupt_processed(cut=len(decision.cut), discarded=discarded)
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
            if record.defer_done:
                self._deferred_dones.add(record)  # queued by _settle once the agent returns
            elif not self._push_control(Outbound(FrameKind.DONE, record=record)):
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
        self,
        record: RequestRecord,
        agent: Agent,
        request: AgentRequest,
        timeout_s: float,
        speech: SpeechOptions | None = None,
    ) -> None:
        with logger.contextualize(request_id=record.request_id):
            logger.info("request started", agent=record.agent, timeout_s=timeout_s)
            error: ErrorInfo | None = None
            timeout_reason: str | None = None
            try:
                with record.scope:
                    self.trace.scope_opened(record, timeout_s)
                    try:
                        # A scope cancelled before it was entered (an INTERRUPT that
                        # arrived before this task first ran) raises here, so the
                        # agent never starts.
                        await trio.lowlevel.checkpoint_if_cancelled()
                        # The protocol says None, but an agent in the wild may return
                        # its text instead of sending it: look at what comes back.
                        stream: _RequestStream | SpokenResponseStream
                        stream = _RequestStream(record, self)
                        if speech is not None:
                            stream = self._spoken(stream, speech)
                        returned = await cast("_AnyAgent", agent)(request, stream)
                        if returned is not None:
                            raise TypeError(
                                f"the agent returned a {type(returned).__name__}; an agent "
                                "streams its reply with stream.send() and returns None"
                            )
                        if isinstance(stream, SpokenResponseStream):
                            await stream.finish()
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
                        self.trace.cancel_delivered(record, cancelled)
                        raise
            except AgentTimeout as exc:
                timeout_reason = _text(exc.reason, 500)
            except AgentError as exc:
                error = ErrorInfo(
                    code=_text(exc.code, 64), message=_text(exc.message, 500), **exc.details
                )
            except Exception as exc:
                # An agent's failure ends its request, never the session.
                logger.opt(exception=exc).warning("agent raised")
                error = ErrorInfo(code=ErrorCode.AGENT_ERROR, message=_describe(exc))
            finally:
                self._settle(record, error, timeout_s, timeout_reason)
                self.trace.scope_closed(record, error)
                self._request_tasks -= 1
                if not self._request_tasks:
                    self._request_tasks_gone.set()

    def _spoken(self, stream: _RequestStream, speech: SpeechOptions) -> SpokenResponseStream:
        """The speech stage around a request's stream (:mod:`trio_agent.speech.stage`)."""
        record = stream.record
        assert self._synthesizer is not None
        assert record.speech is not None
        speaker = Speaker(
            stream,
            self._synthesizer,
            speech,
            record.speech,
            chunk_ms=self.config.audio_chunk_ms,
            lead_ms=self.config.audio_lead_ms,
        )
        return SpokenResponseStream(stream, speaker)

    def _settle(
        self,
        record: RequestRecord,
        error: ErrorInfo | None,
        timeout_s: float,
        timeout_reason: str | None = None,
    ) -> None:
        """Decide how a request ended once its task is done, and queue its DONE.

        If an INTERRUPT or shutdown already decided (the usual case when the scope
        was cancelled), ``registry.end`` returns False and nothing more is sent,
        except the DONE an interrupt deferred until now.
        """
        if self._closing:
            if record.phase is RequestPhase.RUNNING:
                logger.info("request abandoned", why="session closed")
            return
        if error is not None:
            status, reason = DoneStatus.FAILED, error.message
        elif timeout_reason is not None:
            status, reason = DoneStatus.TIMEOUT, timeout_reason
        elif record.scope.cancel_called:
            # Nobody cancels a RUNNING request's scope without ending it first
            # except its own deadline.
            status, reason = DoneStatus.TIMEOUT, f"timeout_s={timeout_s:g} elapsed"
        else:
            status, reason = DoneStatus.COMPLETED, None
        if self.registry.end(record, status, reason=reason, error=error):
            # Behind the request's own STREAM frames, never ahead of them.
            self.lanes.push_stream_terminal(Outbound(FrameKind.DONE, record=record))
            self.trace.done_queued(record)
        elif record in self._deferred_dones:
            self._deferred_dones.remove(record)
            self._push_control(Outbound(FrameKind.DONE, record=record))

    # ------------------------------------------------------------------ writer

    async def _write_loop(self) -> None:
        """Take frames from the lanes, priority first, and send them. The only sender.

        With a :class:`~trio_agent.server.cork.CorkableStream` under the connection, the
        writer frames its messages itself (:mod:`trio_agent.protocol.framing`) and the
        frames it takes one after another leave in one socket write: a *batch*.
        A batch ends when it holds ``config.write_batch_frames``, right after any
        frame that is not a STREAM or AUDIO frame (so an INTERRUPT_ACK is never
        held back), right after the first STREAM frame of a request (so a new
        reply's first words are not either), and when the lanes are empty and stay
        so for one turn of the producers (a checkpoint, or two: see the loop).
        Framing and keeping do no I/O, so those turns are the writer's only
        schedule points before the flush, and an ACK queued meanwhile is the next
        frame taken, which ends the batch. A STREAM frame counts as written once it
        is in the batch: the batch reaches the socket whole and in order, or the
        connection is gone, so a DONE counts exactly the STREAM frames ahead of it
        on the wire.
        """
        lanes = self.lanes
        ws = self.ws
        most = self.config.write_batch_frames
        cork = self._cork if most > 1 else None
        batch: list[tuple[Outbound, str | bytes]] = []
        try:
            while True:
                frame = await lanes.next_frame()
                text = frame.data if frame.data is not None else self._render_done(frame)
                if frame.kind is FrameKind.DONE:
                    # Before the write: a client that has the DONE can count on it.
                    self._report_done(frame)
                if cork is None:
                    await ws.send_message(text)
                elif ws.closed is not None:
                    # As send_message would: nothing follows a close frame.
                    raise ConnectionClosed(ws.closed)
                else:
                    cork.keep(websocket_frame(text))
                # In a batch, a frame counts as written from here on (see above).
                self.trace.frame_written(frame)
                first = False
                if frame.kind is FrameKind.STREAM:
                    assert frame.record is not None
                    frame.record.frames_written += 1
                    first = frame.record.frames_written == 1
                elif frame.kind is FrameKind.AUDIO:
                    assert frame.record is not None
                    assert frame.record.speech is not None
                    frame.record.speech.samples_written += frame.samples
                batch.append((frame, text))
                ends_batch = (
                    cork is None
                    or frame.kind not in (FrameKind.STREAM, FrameKind.AUDIO)
                    or first
                    or len(batch) >= most
                )
                if not ends_batch and not lanes.queued:
                    # Give the producers that are ready one turn to add to the
                    # batch (an agent streaming flat out queues one frame per
                    # turn); if none does, the batch is complete. One that is
                    # ready now may run after the writer in the next scheduler
                    # batch (Trio runs a batch in either order), so a second
                    # checkpoint when the first found nothing: then every task
                    # that was ready has had its turn.
                    await trio.lowlevel.checkpoint()
                    if not lanes.queued:
                        await trio.lowlevel.checkpoint()
                    ends_batch = not lanes.queued
                if ends_batch:
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
        finally:
            lanes.writer_gone()

    def _report_done(self, frame: Outbound) -> None:
        """Run the agent's ``on_done`` callbacks: the DONE is rendered, its count final."""
        record = frame.record
        assert record is not None
        for callback in record.done_callbacks:
            try:
                callback()
            except Exception as exc:
                logger.opt(exception=exc).error(
                    "an on_done callback raised", request_id=record.request_id
                )

    def _batch_written(self, batch: list[tuple[Outbound, str | bytes]]) -> None:
        """Book-keeping once a batch is on the socket: count it, free the ids of
        DONE requests, log the ends and the ACK latencies."""
        for frame, text in batch:
            self.metrics.frame_written(frame.kind, text)
            record = frame.record
            if frame.kind is FrameKind.DONE:
                assert record is not None
                self.registry.done_written(record)
                self.metrics.request_ended(record)
                with logger.contextualize(request_id=record.request_id):
                    logger.info(
                        "request ended",
                        status=str(record.status),
                        frames=record.frames_written,
                        reason=record.reason,
                    )
            elif frame.read_at is not None:
                self.metrics.interrupt_acknowledged(trio.current_time() - frame.read_at)
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
                    **record.done_fields,
                    **(
                        record.speech.done_fields(record.frames_written)
                        if record.speech is not None
                        else {}
                    ),
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
            self.trace.priority_queued(frame)
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
        self.metrics.error_sent(code)
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

    __slots__ = ("_encode", "_encode_audio", "_lanes", "_record", "_session")

    # It is also the speech stage's sink (trio_agent.speech.stage.SpeechSink).

    def __init__(self, record: RequestRecord, session: Session) -> None:
        self._record = record
        self._session = session
        self._lanes = session.lanes
        self._encode = StreamFrameEncoder(session.session_id, record.request_id)
        self._encode_audio = (
            AudioFrameEncoder(record.request_id, record.speech.sample_rate)
            if record.speech is not None
            else None
        )

    @property
    def request_id(self) -> str:
        return self._record.request_id

    @property
    def record(self) -> RequestRecord:
        return self._record

    async def send(self, delta: str) -> None:
        if not isinstance(delta, str):
            raise TypeError(f"a delta must be a str, not {type(delta).__name__}")
        await self._send(delta)

    async def send_word(self, delta: str, *, start_ms: float, end_ms: float) -> None:
        """A spoken word's STREAM frame, with its audio's ``start_ms``.

        A checkpoint only when it waits for room (see
        :class:`~trio_agent.speech.stage.SpeechSink`)."""
        speech = self._record.speech
        assert speech is not None
        await self._send(delta, start_ms, checkpoint=False)
        speech.words.append(SpokenWord(delta, start_ms, end_ms))

    async def send_audio(self, samples: bytes, *, start_sample: int) -> None:
        """One AUDIO chunk, budgeted in milliseconds in the stream lane.

        A checkpoint only when it waits for room (see
        :class:`~trio_agent.speech.stage.SpeechSink`)."""
        record = self._record
        speech = record.speech
        assert speech is not None
        n_samples = len(samples) // 2
        duration_ms = speech.ms(n_samples)
        if not self._lanes.has_audio_room(duration_ms):
            # Backpressure, and an interrupt point.
            await self._lanes.wait_for_audio_room(duration_ms)
        await self._check_sendable()
        assert self._encode_audio is not None
        data = self._encode_audio(
            seq=speech.chunks_queued,
            start_ms=speech.ms(start_sample),
            duration_ms=duration_ms,
            samples=samples,
        )
        speech.chunks_queued += 1
        self._lanes.push_stream(
            Outbound(FrameKind.AUDIO, data, record, samples=n_samples, audio_ms=duration_ms)
        )

    async def _check_sendable(self) -> None:
        """Raise rather than queue for a request that is cancelled or has ended.

        Not a schedule point: called after the wait for room, or with room and no
        wait at all (the speech sink queues a group of chunks that way). A pending
        cancellation is delivered first: a scope cancelled while the phase is still
        RUNNING (its deadline, the session ending) queues nothing more.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        record = self._record
        if record.phase is not RequestPhase.RUNNING:
            # Cut while waiting for room, or woken from its last checkpoint and
            # cut before it ran: the discard that made the room woke us before the
            # cancellation could. The cancellation lands at the caller's next
            # checkpoint; this refuses to queue anything more.
            self._session.trace.late_send(record)
            raise trio.ClosedResourceError(
                f"request {record.request_id} has ended ({record.status}); nothing more is sent for it"
            )

    async def _send(
        self, delta: str, start_ms: float | None = None, *, checkpoint: bool = True
    ) -> None:
        record = self._record
        if checkpoint or not self._lanes.has_stream_room(record):
            # Backpressure, and an interrupt point.
            await self._lanes.wait_for_stream_room(record)
        await self._check_sendable()
        # Render before counting: text that cannot be encoded (a lone surrogate)
        # raises here and uses no seq, even for an agent that catches the error.
        seq = record.frames_queued
        text = self._encode(
            msg_id=self._session._next_msg_id(),
            ts=now_ms(),
            seq=seq,
            delta=delta,
            start_ms=start_ms,
        )
        record.frames_queued += 1
        self._lanes.push_stream(Outbound(FrameKind.STREAM, text, record))
        self._session.trace.stream_queued(record, seq)
        if record.deltas is not None:
            record.deltas.append(delta)

    def add_done_fields(self, **fields: Any) -> None:
        self._record.done_fields.update(
            json_fields(fields, reserved=DonePayload.model_fields, where="DONE")
        )

    def defer_done(self) -> None:
        if self._record.phase is RequestPhase.RUNNING:
            self._record.defer_done = True

    def on_done(self, callback: Callable[[RequestOutcome], None]) -> None:
        record = self._record
        if record.frames_queued:
            raise RuntimeError("on_done() must be called before the first send()")
        if record.deltas is None:
            record.deltas = []

        def report() -> None:
            assert record.status is not None
            assert record.deltas is not None
            callback(
                RequestOutcome(
                    request_id=record.request_id,
                    status=record.status,
                    frames=record.frames_written,
                    delivered=tuple(record.deltas[: record.frames_written]),
                    heard_text=record.speech.heard_text(record.frames_written)
                    if record.speech is not None
                    else None,
                )
            )

        record.done_callbacks.append(report)


def _references(raw: str | bytes) -> tuple[str | None, str | None]:
    """The ``msg_id`` and ``request_id`` of a client frame, where they can be read."""
    if isinstance(raw, bytes):
        return None, None
    try:
        message = parse_client_message(raw)
    except ProtocolError as exc:
        return exc.ref, exc.request_id
    return message.msg_id, message.request_id


def _text(value: object, limit: int) -> str:
    """``str(value)`` cut to ``limit`` characters, for what an agent hands us: even a
    value whose ``__str__`` raises, or a text with lone surrogates (which JSON cannot
    carry), gives a text that can be sent, never an exception."""
    try:
        text = str(value)[:limit]
    except Exception:
        text = f"({type(value).__name__} that cannot be shown)"[:limit]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an agent's exception, at most 500 characters."""
    return f"{type(exc).__name__}: {_text(exc, 500)}"[:500]
