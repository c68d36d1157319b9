"""One WebSocket connection: a nursery, a reader, a writer, and a cancel scope per request.

:class:`Session` is the session's lifecycle and its reader: it reads the client's
frames and acts on each one synchronously (an INTERRUPT cancels request scopes
right here), while the :class:`~trio_agent.server.writer.Writer` sends and the
:class:`~trio_agent.server.request_runner.RequestRunner` runs the requests. The
cancel-scope tree and the rules this code keeps are in ``docs/architecture.md``;
how an interrupt travels, in ``docs/cancellation.md``; the guarantees a client
gets, in ``docs/protocol.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger
from pydantic import BaseModel
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_agent.agents import Agent, AgentRequest
from trio_agent.observability.events import session_events
from trio_agent.observability.metrics import NO_METRICS, SessionMetrics
from trio_agent.observability.trace import NO_TRACE, Tracer
from trio_agent.protocol.audio import decode_audio_frame
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import (
    CloseCode,
    DoneStatus,
    ErrorCode,
    ErrorMessage,
    ErrorPayload,
    HeartbeatMessage,
    InterruptAckMessage,
    InterruptAckPayload,
    InterruptMessage,
    ProtocolError,
    RequestMessage,
    ResumeMessage,
    ServerHeartbeatMessage,
    SessionMessage,
    SessionPayload,
    encode,
    now_ms,
    parse_client_message,
)
from trio_agent.server.cork import CorkableStream
from trio_agent.server.lanes import LaneOverflow, Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.ratelimit import FrameRateLimit, Verdict
from trio_agent.server.registry import AdmissionRefused, RequestRegistry
from trio_agent.server.request_runner import RequestRunner
from trio_agent.server.session_end import SessionEnd
from trio_agent.server.writer import Writer
from trio_agent.speech.timeline import SpeechOptionError, SpeechTimeline, speech_options

if TYPE_CHECKING:
    from trio_agent.server.config import ServerConfig
    from trio_agent.speech.synthesizers import Synthesizer

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT_S", "Session", "SessionEnd"]

#: How long closing the WebSocket (sending the close frame, waiting for the peer's)
#: may take before the session gives up on the handshake and drops the connection.
CLOSE_HANDSHAKE_TIMEOUT_S = 1.0


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
        self.session_id = session_id
        self.config = config
        self._agents = agents
        self._session_payload = session_payload
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
        self._msg_ids = MessageIds()
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
        self._writer = Writer(
            ws,
            session_id=session_id,
            lanes=self.lanes,
            registry=self.registry,
            msg_ids=self._msg_ids,
            events=self.events,
            batch_frames=config.write_batch_frames,
            cork=cork,
            end_session=self._end_session,
        )
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

    async def run(self) -> None:
        """Serve the connection until the client leaves, the session times out or
        :meth:`begin_shutdown` is called. Returns only when every task it started has
        finished; never raises for anything the client does."""
        with logger.contextualize(session_id=self.session_id):
            self.events.session_opened(str(self.ws.remote))
            self._push_control(self._session_frame())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer.run, name=f"writer {self.session_id}")
                with self._reader_scope:
                    await self._read_loop()
                await self._close(nursery)
            end = self._end or SessionEnd("reader stopped")
            self.events.session_closed(end.reason, end.code)

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
                self.events.scope_cancelled(record, discarded)
            # The DONEs still deferred go now too: the session is about to flush.
            ending += self._requests.take_deferred_dones()
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
        self._requests.stop_queueing_dones()
        if end.code is not None:
            # Bounded and shielded: the close frame is polite, not essential, and
            # must not be skipped because the server is being cancelled around us.
            with trio.move_on_after(CLOSE_HANDSHAKE_TIMEOUT_S, shield=True):
                await self.ws.aclose(code=end.code, reason=end.reason[:120])
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
                self.events.frame_handling_failed(exc)
                self._send_error(ErrorCode.INTERNAL_ERROR, "the server failed to handle this frame")
            if self._end is not None:
                return

    def _handle_frame(self, raw: str | bytes) -> None:
        """Act on one client frame. Synchronous on purpose: a busy stream can never
        delay the handling of an INTERRUPT (``docs/architecture.md``)."""
        if self._frame_rate is not None and not self._within_rate(raw):
            return
        if isinstance(raw, bytes):
            self._refuse_binary(raw)
            return
        self.events.frame_received(raw)
        try:
            message = parse_client_message(raw)
        except ProtocolError as exc:
            self.events.protocol_error(exc)
            self._send_error(exc.code, exc.message, ref=exc.ref, request_id=exc.request_id)
            return
        self.events.frame_read(message)
        if isinstance(message, ResumeMessage):
            self._refuse_resume(message)
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
                    msg_id=self._msg_ids.next_id(),
                    session_id=self.session_id,
                    ref=message.msg_id,
                    ts=now_ms(),
                )
            )

    def _refuse_resume(self, message: ResumeMessage) -> None:
        """A RESUME (v1.2): this server keeps no session beyond its connection (its
        SESSION offers no ``resume``), so the client must start over."""
        self._send_error(
            ErrorCode.RESUME_UNKNOWN,
            "no session to resume here: this server does not keep sessions past their connection",
            ref=message.msg_id,
        )
        self._end_session(
            SessionEnd("RESUME of an unknown session", CloseCode.POLICY_VIOLATION, flush=True)
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
        """Apply the frame rate limit (:mod:`trio_agent.server.ratelimit`); False: skip ``raw``.

        An INTERRUPT over the rate is still acted on (True), never answered with
        RATE_LIMITED; it counts toward the flood all the same, and a flood past
        ``rate_limit_close_after`` closes the session, which cancels every request.
        """
        assert self._frame_rate is not None
        verdict = self._frame_rate.check(trio.current_time())
        if verdict is Verdict.ACCEPT:
            return True
        if verdict is Verdict.CLOSE:
            self.events.flood_closed(self._frame_rate.refused_total)
            self._end_session(
                SessionEnd("client exceeded the frame rate limit", CloseCode.POLICY_VIOLATION)
            )
            return False
        if self._frame_rate.refused_in_flood == 1:
            self.events.rate_limiting(self.config.rate_limit_per_s)
        ref, request_id, is_interrupt = _references(raw)
        if is_interrupt:
            # A stop is always acted on: it only removes work, so obeying it can
            # never feed a flood. It has counted toward flood detection above.
            return True
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
        self._requests.start(self._nursery, record, agent, request, timeout, speech)

    def _interrupt(self, message: InterruptMessage, *, read_at: float) -> None:
        """Cut what ``message`` targets: cancel each scope *directly* (no flag for the
        agent to poll), drop its queued frames, then queue the ACK and the DONEs on
        the priority lane, in that order. Synchronous: all done before the reader
        reads another frame (``docs/cancellation.md``)."""
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
            self.events.scope_cancelled(record, dropped)
        self.events.interrupt_processed(message, decision.interrupted_ids, discarded)
        ack = InterruptAckMessage(
            msg_id=self._msg_ids.next_id(),
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
                self._requests.defer_done(record)  # queued once the agent returns
            elif not self._push_control(Outbound(FrameKind.DONE, record=record)):
                return

    # ------------------------------------------------------------------ frames

    def _session_frame(self) -> SessionMessage:
        return SessionMessage(
            msg_id=self._msg_ids.next_id(),
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
            self.events.priority_queued(frame)
        except LaneOverflow as exc:
            self.events.control_lane_overflowed(str(exc))
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
        self.events.error_sent(code)
        self._push_control(
            ErrorMessage(
                msg_id=self._msg_ids.next_id(),
                session_id=self.session_id,
                request_id=request_id,
                ref=ref,
                ts=now_ms(),
                payload=ErrorPayload(code=code, message=message),
            )
        )


def _references(raw: str | bytes) -> tuple[str | None, str | None, bool]:
    """The ``msg_id`` and ``request_id`` of a client frame, where they can be read,
    and whether it is a valid INTERRUPT."""
    if isinstance(raw, bytes):
        return None, None, False
    try:
        message = parse_client_message(raw)
    except ProtocolError as exc:
        return exc.ref, exc.request_id, False
    return message.msg_id, message.request_id, isinstance(message, InterruptMessage)
