"""How a session acts on the frames its reader reads, and queues what it answers.

Part of :class:`~trio_agent.server.session.Session` (this class is its base): a
REQUEST starts a task, an INTERRUPT cancels scopes and queues the ACK and the
DONEs, every answer goes on the priority lane. All synchronous: the reader never
awaits while handling a frame (``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio
from pydantic import BaseModel

from trio_agent.agents import Agent, AgentRequest
from trio_agent.observability.events import SessionEvents
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import (
    CloseCode,
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
from trio_agent.server.cluster_link import ClusterLink
from trio_agent.server.connection import ClusterResume, Connection, HandOver, Resumable
from trio_agent.server.lanes import LaneOverflow, Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.ratelimit import FrameRateLimit, Verdict
from trio_agent.server.registry import (
    AdmissionRefused,
    InterruptDecision,
    RequestRecord,
    RequestRegistry,
)
from trio_agent.server.replay import ReplayBuffer
from trio_agent.server.request_runner import RequestRunner
from trio_agent.server.resume_book import AckLedger, Redeemed, ResumeBook
from trio_agent.server.session_end import SessionEnd
from trio_agent.speech.timeline import SpeechOptionError, SpeechTimeline, speech_options

if TYPE_CHECKING:
    from trio_agent.server.config import ServerConfig
    from trio_agent.speech.synthesizers import Synthesizer

__all__ = ["FrameHandling"]


class FrameHandling:
    """The frame handlers of a session; :class:`~trio_agent.server.session.Session` sets
    every attribute named here."""

    session_id: str
    config: ServerConfig
    events: SessionEvents
    registry: RequestRegistry
    lanes: OutboundLanes
    replay: ReplayBuffer | None
    agent_state: dict[object, Any]
    _agents: Mapping[str, Agent]
    _session_payload: SessionPayload
    _synthesizer: Synthesizer | None
    _frame_rate: FrameRateLimit | None
    _nursery: trio.Nursery | None
    _requests: RequestRunner
    _msg_ids: MessageIds
    _book: ResumeBook | None
    _acks: AckLedger
    _end_session: Callable[[SessionEnd], None]
    _take_over: Callable[[Any, ResumeMessage], tuple[Redeemed, Resumable | None, str | None]] | None
    _connections_served: int
    cluster: ClusterLink | None

    def _refuse_binary(self, raw: bytes) -> None:
        """A binary message: clients send JSON text frames only (binary frames carry
        AUDIO, server to client), so it is refused whatever its bytes are. Its bytes
        are not decoded: an ERROR that quoted a decoder would read as if the client
        had meant to send AUDIO."""
        self._send_error(
            ErrorCode.INVALID_MESSAGE,
            f"binary frames are not accepted (got {len(raw)} bytes): a client sends JSON "
            "text frames only",
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
            # Say why this one cannot be asked, and name only the ones that can.
            usable = sorted(
                other
                for other in self._agents
                if (listed := self._session_payload.agents.get(other)) is None or listed.available
            )
            why = (
                f"is unavailable: {entry.unavailable_reason or 'no reason given'}"
                if agent is not None and entry is not None
                else "is not available here"
            )
            self._send_error(
                ErrorCode.UNKNOWN_AGENT,
                f"agent {name[:64]!r} {why} (available: {', '.join(usable) or 'none'})",
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
        if self.replay is not None:
            self.replay.request_started(request_id)
        if self.cluster is not None:
            self.cluster.request_started(self.session_id, request_id)
        self._requests.start(self._nursery, record, agent, request, timeout, speech)

    def _interrupt(self, message: InterruptMessage, *, read_at: float) -> None:
        """Cut what ``message`` targets: cancel each scope *directly* (no flag for the
        agent to poll), drop its queued frames, then queue the ACK and the DONEs on
        the priority lane, in that order. Synchronous: all done before the reader
        reads another frame (``docs/cancellation.md``)."""
        reason = message.payload.reason
        decision = self.registry.interrupt(message.request_id, reason=reason, msg_id=message.msg_id)
        played_ms = message.payload.played_ms
        for record in decision.cut:
            if record.speech is not None and played_ms is not None and message.request_id:
                record.speech.played_ms = played_ms
        discarded = self._cut(decision, f"INTERRUPT {message.msg_id} ({reason})")
        self._tell_nodes_that_run(decision.cut, message.msg_id, reason)
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
        if not self._push_control(
            Outbound(FrameKind.CONTROL, encode(ack), read_at=read_at, ack_of=message.msg_id)
        ):
            return
        if self._book is not None:
            # Until a connection is known to have it, a resume reports it (RESUMED).
            self._acks.acknowledged(message.msg_id, decision.interrupted_ids)
        for record in decision.cut:
            if record.defer_done:
                self._requests.defer_done(record)  # queued once the agent returns
            elif not self._push_control(Outbound(FrameKind.DONE, record=record)):
                return

    def _handle_frame(self, raw: str | bytes, connection: Connection | None = None) -> None:
        """Act on one client frame. Synchronous on purpose: a busy stream can never
        delay the handling of an INTERRUPT (``docs/architecture.md``), and of two
        racing RESUMEs exactly one wins."""
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
            self._take_resume(message, connection)
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

    def _take_resume(self, message: ResumeMessage, connection: Connection | None) -> None:
        """A RESUME (v1.2). Only as the first frame of a new connection; then the
        server checks session and token (synchronously), and on success this
        session, which has run nothing, ends quietly and hands the connection over."""
        if connection is None or connection.frames_read != 1 or self._connections_served != 1:
            self._send_error(
                ErrorCode.INVALID_MESSAGE,
                "RESUME must be the first frame of a new connection",
                ref=message.msg_id,
            )
            return
        if self.cluster is not None:
            # The node decides, through the store (atomic across nodes), once this
            # reader has handed the socket back: the RESUME may name a session of
            # another node.
            connection.handover = ClusterResume(message)
            self._end_session(SessionEnd("resuming in the cluster", flush=True))
            return
        if self._take_over is None or self._book is None:
            verdict, target, token = Redeemed.UNKNOWN, None, None
        else:
            verdict, target, token = self._take_over(self, message)
        if verdict is Redeemed.OK and target is not None and token is not None:
            connection.handover = HandOver(target, message, token)
            # No close frame: the socket goes on, serving the resumed session.
            self._end_session(SessionEnd(f"resumed session {target.session_id}", flush=True))
            return
        self.events.resume_refused(verdict.value)
        if verdict is Redeemed.DENIED:
            code, text = ErrorCode.RESUME_DENIED, "wrong or already used resume token"
        else:
            code, text = (
                ErrorCode.RESUME_UNKNOWN,
                "no session to resume here (unknown, or its window has passed): start over",
            )
        self._send_error(code, text, ref=message.msg_id)
        self._end_session(
            SessionEnd(f"RESUME refused ({code})", CloseCode.POLICY_VIOLATION, flush=True)
        )

    def _cut(self, decision: InterruptDecision, why: str) -> int:
        """Cancel each cut request's scope *directly* and drop its queued frames;
        return how many frames were dropped."""
        discarded = 0
        for record in decision.cut:
            # Cancel first: an agent parked waiting for stream room then wakes with
            # Cancelled, rather than being woken for the room discard() makes.
            record.scope.cancel(reason=why)
            dropped = self.lanes.discard(record)
            discarded += dropped
            self.events.scope_cancelled(record, dropped)
        return discarded

    def _tell_nodes_that_run(self, cut: list[RequestRecord], msg_id: str, reason: str) -> None:
        """Cluster: a cut request that runs on another node (its frames relayed here)
        is cut here at once (its relay's scope); its node is told to stop it too."""
        if self.cluster is None:
            return
        by_node: dict[str, list[str]] = {}
        for record in cut:
            if record.runs_on is not None:
                by_node.setdefault(record.runs_on, []).append(record.request_id)
        for node_id, request_ids in by_node.items():
            self.events.cluster("interrupt_sent", to_node=node_id, msg_id=msg_id, cut=request_ids)
            self.cluster.interrupt_elsewhere(node_id, self.session_id, msg_id, request_ids, reason)

    def cut_from_elsewhere(self, msg_id: str, request_ids: list[str], reason: str) -> None:
        """Cluster: INTERRUPT ``msg_id``, read on the node that serves the client now,
        cut these requests, which run here. Exactly as a local INTERRUPT, but the
        ACK was that node's to write: here each cut request's DONE goes to the store
        (after the other node's, which counts what its client got)."""
        for request_id in request_ids:
            decision = self.registry.interrupt(request_id, reason=reason, msg_id=msg_id)
            self.events.cluster(
                "interrupt_received", request_id, msg_id=msg_id, cut=bool(decision.cut)
            )
            self._cut(decision, f"INTERRUPT {msg_id} ({reason}), read on another node")
            for record in decision.cut:
                if record.defer_done:
                    self._requests.defer_done(record)
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
            # Told first: a frame pushed into empty lanes may be written inside the
            # push (``Writer._write_directly``), and the trace keeps queued before written.
            self.events.priority_queued(frame)
            self.lanes.push_priority(frame)
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
