"""The client state of one connection, as a pure state machine.

:class:`ClientState` is to :mod:`trio_agent.client.connection` what h11's
``Connection`` is to an HTTP client: it builds the frames to send and turns each
frame received into :data:`Event` values, with no I/O and no waiting, so a test
can drive it frame by frame. docs/client.md explains the optimistic interrupt and
the stale frames it implements.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ValidationError

from trio_agent.client.reply import AudioChunk, Chunk, DoneInfo
from trio_agent.client.tracking import (
    Acknowledged,
    Event,
    HeartbeatAnswered,
    InterruptRefused,
    InterruptState,
    Opened,
    Outgoing,
    ProtocolBreach,
    Reopened,
    RequestState,
    RequestUpdated,
    Resumed,
    ResumeRefused,
    UnclaimedError,
)
from trio_agent.protocol.audio import decode_audio_frame
from trio_agent.protocol.bounds import MAX_REASON_CHARS, REQUEST_ID_PATTERN
from trio_agent.protocol.guarantees import GuaranteeChecker
from trio_agent.protocol.messages import (
    DEFAULT_INTERRUPT_REASON,
    SERVER_MODELS,
    DoneMessage,
    DoneStatus,
    ErrorInfo,
    ErrorMessage,
    HeartbeatMessage,
    InterruptAckMessage,
    InterruptAckPayload,
    InterruptMessage,
    InterruptPayload,
    ProtocolError,
    RequestMessage,
    RequestPayload,
    ResumedMessage,
    ResumeMessage,
    ResumeOffer,
    ResumePayload,
    ServerHeartbeatMessage,
    SessionMessage,
    StreamMessage,
    encode,
    load_json_object,
    now_ms,
)

_REQUEST_ID: Final = re.compile(REQUEST_ID_PATTERN)


__all__ = [
    "Acknowledged",
    "AudioChunk",
    "Chunk",
    "ClientState",
    "DoneInfo",
    "Event",
    "HeartbeatAnswered",
    "InterruptRefused",
    "InterruptState",
    "Opened",
    "Outgoing",
    "ProtocolBreach",
    "Reopened",
    "RequestState",
    "RequestUpdated",
    "ResumeRefused",
    "Resumed",
    "UnclaimedError",
    "check_request_id",
]

# --------------------------------------------------------------------------- the machine


def check_request_id(request_id: str) -> str:
    """Return ``request_id`` if it is a valid protocol v1 id; raise ``ValueError`` if not."""
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(
            f"request_id must be 1 to 64 characters of [A-Za-z0-9._:-], not {request_id!r}"
        )
    return request_id


class ClientState:
    """The client state of one connection: its requests, its interrupts, and what
    each frame from the server does to them.

    Two rules make an interruption feel instant. :meth:`interrupt` ends the
    targeted requests *locally* before the INTERRUPT frame even exists (status
    ``interrupted``, unconsumed chunks and audio dropped, iteration over). From
    then on a STREAM or AUDIO frame of such a request that still arrives is
    *stale*: dropped and counted, never shown; the server's DONE is kept as
    ``server_done``. Every frame received goes through ``checker``, so the server's
    guarantees are checked as it goes (:class:`ProtocolBreach` events).

    :param checker: the guarantee checker every received frame goes through.
    """

    def __init__(self, checker: GuaranteeChecker | None = None) -> None:
        self.checker = checker if checker is not None else GuaranteeChecker()
        self.session: SessionMessage | None = None
        #: Requests the server has not said its last word about, by id.
        self.requests: dict[str, RequestState] = {}
        #: INTERRUPTs waiting for their ACK, by ``msg_id``.
        self.interrupts: dict[str, InterruptState] = {}
        self._msg_ids = itertools.count()
        self._request_ids = itertools.count(1)
        #: How to resume: the SESSION's offer, then each RESUMED's (the token rotates).
        self.resume_offer: ResumeOffer | None = None
        #: After :meth:`reconnected`: waiting for the new SESSION, then the RESUMED.
        self._reopening: Literal["SESSION", "RESUMED"] | None = None
        self._resume_msg_id: str | None = None

    # ------------------------------------------------------------------ sending

    def request(
        self,
        input: str,
        *,
        agent: str | None = None,
        options: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> tuple[RequestState, Outgoing]:
        """Register a new request and build its REQUEST frame.

        Raises ``ValueError`` for an invalid field, or for a ``request_id`` this
        client still uses (its DONE has not arrived, so the server would refuse it
        as a duplicate).
        """
        if request_id is None:
            request_id = self._fresh_request_id()
        elif check_request_id(request_id) in self.requests:
            raise ValueError(f"request_id {request_id!r} is still in use on this connection")
        msg_id = self._next_msg_id()
        try:
            payload = RequestPayload(
                input=input, agent=agent, options=dict(options or {}), timeout_s=timeout_s
            )
        except ValidationError as exc:
            raise ValueError(f"invalid request: {exc}") from None
        message = RequestMessage(msg_id=msg_id, request_id=request_id, ts=now_ms(), payload=payload)
        voice = payload.options.get("voice")
        state = RequestState(
            request_id=request_id, msg_id=msg_id, voice=voice is not None and voice is not False
        )
        self.requests[request_id] = state
        state.outgoing = _outgoing(msg_id, message)
        return state, state.outgoing

    def forget(self, state: RequestState) -> None:
        """Drop a request whose REQUEST was never sent (the caller withdrew it)."""
        if self.requests.get(state.request_id) is state:
            del self.requests[state.request_id]

    def interrupt(
        self,
        request_id: str | None = None,
        reason: str = DEFAULT_INTERRUPT_REASON,
        *,
        played_ms: float | None = None,
    ) -> tuple[InterruptState, Outgoing]:
        """End the targeted requests locally, then build the INTERRUPT frame.

        The targets are the request named ``request_id`` or, when it is ``None``,
        every request that has not ended locally. Each one ends at once with
        ``status=interrupted`` (``local=True``), its unconsumed chunks and audio
        are dropped, and every STREAM or AUDIO frame of it that arrives later is
        stale.

        ``played_ms`` (the caller's playback position in that request's audio)
        goes into the payload; it counts only when one request is named, so it is
        refused (``ValueError``) for an interrupt-all. A ``reason`` longer than
        :data:`~trio_agent.protocol.bounds.MAX_REASON_CHARS` is refused the same
        way, before anything is cut.
        """
        if request_id is not None:
            check_request_id(request_id)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if len(reason) > MAX_REASON_CHARS:
            # Refused here, before anything is cut: the server would refuse it too.
            raise ValueError(f"reason is {len(reason)} characters; at most {MAX_REASON_CHARS}")
        if played_ms is not None:
            if request_id is None:
                raise ValueError("played_ms counts only for an INTERRUPT that names one request")
            if not (isinstance(played_ms, int | float) and 0 <= played_ms < math.inf):
                raise ValueError(f"played_ms must be a finite number >= 0, not {played_ms!r}")
        msg_id = self._next_msg_id()
        if request_id is None:
            targets = [state for state in self.requests.values() if not state.ended]
        else:
            named = self.requests.get(request_id)
            targets = [named] if named is not None and not named.ended else []
        for state in targets:
            state.cut_by = msg_id
            state.chunks.clear()
            state.audio.clear()
            state.done = DoneInfo(
                status=DoneStatus.INTERRUPTED,
                interrupted=True,
                frames=state.frames,
                reason=reason,
                local=True,
            )
        interrupt = InterruptState(msg_id, request_id, reason, tuple(targets))
        self.interrupts[msg_id] = interrupt
        interrupt.outgoing = _outgoing(
            msg_id,
            InterruptMessage(
                msg_id=msg_id,
                request_id=request_id,
                ts=now_ms(),
                payload=InterruptPayload(
                    reason=reason, played_ms=None if played_ms is None else float(played_ms)
                ),
            ),
        )
        return interrupt, interrupt.outgoing

    def heartbeat(self) -> Outgoing:
        """Build a HEARTBEAT frame; its reply comes back as :class:`HeartbeatAnswered`."""
        msg_id = self._next_msg_id()
        return _outgoing(msg_id, HeartbeatMessage(msg_id=msg_id, ts=now_ms()))

    def sending(self, outgoing: Outgoing) -> None:
        """Call right before ``outgoing`` goes on the wire (in wire order), so the
        guarantee checker knows what was sent before any answer can arrive."""
        self.checker.sent(outgoing.frame)
        kind = outgoing.frame.get("msg_type")
        if kind == "REQUEST":
            state = self.requests.get(str(outgoing.frame.get("request_id")))
            if state is not None and state.msg_id == outgoing.msg_id:
                state.sent = True
        elif kind == "INTERRUPT" and outgoing.msg_id in self.interrupts:
            self.interrupts[outgoing.msg_id].sent = True

    # ------------------------------------------------------------------ resuming (v1.2)

    def reconnected(self) -> None:
        """The connection dropped and the client opened a new one to resume: its
        SESSION is expected (a :class:`Reopened` event), then :meth:`resume`'s answer."""
        self._reopening = "SESSION"
        self._resume_msg_id = None
        self.checker.reconnected()

    def resume(self) -> Outgoing:
        """Build the RESUME frame: the session's id, its current token, and for each
        request whose REQUEST was sent and whose DONE has not come the last ``seq``
        received (and the last audio ``seq`` for a spoken one)."""
        if self.session is None or self.resume_offer is None:
            raise RuntimeError("the server offered no resume")
        sent = [state for state in self.requests.values() if state.sent]
        msg_id = self._next_msg_id()
        self._resume_msg_id = msg_id
        message = ResumeMessage(
            msg_id=msg_id,
            session_id=self.session.session_id,
            ts=now_ms(),
            payload=ResumePayload(
                token=self.resume_offer.token,
                last_seq={state.request_id: state.last_seq for state in sent},
                last_audio_seq={s.request_id: s.last_audio_seq for s in sent if s.voice},
            ),
        )
        return _outgoing(msg_id, message)

    def _resumed(self, message: ResumedMessage, shown: str) -> list[Event]:
        """RESUMED: the new token, the ACKs the client may have missed, and the frames
        the dropped connection took with it that the server never saw."""
        if self._reopening != "RESUMED" or message.ref != self._resume_msg_id:
            return [ProtocolBreach(None, "a RESUMED that answers no RESUME", shown)]
        self._reopening = None
        self._resume_msg_id = None
        self.resume_offer = message.payload.resume
        events: list[Event] = []
        for msg_id, cut in message.payload.interrupts.items():
            interrupt = self.interrupts.pop(msg_id, None)
            if interrupt is not None:
                ack = InterruptAckPayload(
                    interrupted=list(cut),
                    interrupted_count=len(cut),
                    reason=interrupt.reason,
                    targets={},
                )
                events.append(Acknowledged(interrupt, ack))
        known = message.payload.requests
        resend: list[Outgoing] = [
            state.outgoing
            for state in self.requests.values()
            if state.sent
            and state.outgoing is not None
            and state.request_id not in known
            and state.last_seq < 0
            and state.last_audio_seq < 0
        ]
        resend += [
            interrupt.outgoing
            for interrupt in self.interrupts.values()
            if interrupt.sent and interrupt.outgoing is not None
        ]
        # The ACKs first: the caller acts on the events in order, and RESUMED ends the handshake.
        return [*events, Resumed(message.payload, tuple(resend))]

    # ------------------------------------------------------------------ receiving

    def receive(self, raw: str | bytes) -> list[Event]:
        """Take one frame from the server; return what happened because of it.

        ``str`` is a text frame (JSON); ``bytes`` is a binary frame, which in
        protocol v1.1 can only be AUDIO.
        """
        if isinstance(raw, bytes | bytearray | memoryview):
            return self._audio(bytes(raw))
        shown = raw[:300]
        try:
            obj = load_json_object(raw)
        except (ValueError, RecursionError) as exc:
            return [ProtocolBreach(None, f"a frame that is not JSON text: {exc}", shown)]
        if not isinstance(obj, dict):
            return [ProtocolBreach(None, "a frame that is not a JSON object", shown)]
        events: list[Event] = [
            ProtocolBreach(v.guarantee, v.message, shown) for v in self.checker.received(obj)
        ]
        model = SERVER_MODELS.get(obj.get("msg_type"))  # type: ignore[arg-type]
        if model is None:
            events.append(
                ProtocolBreach(None, f"unknown server msg_type {obj.get('msg_type')!r}", shown)
            )
            return events
        try:
            message: BaseModel = model.model_validate(obj)
        except ValidationError as exc:
            events.append(ProtocolBreach(None, f"a malformed {model.__name__}: {exc}", shown))
            return events
        if isinstance(message, SessionMessage):
            if self.session is None:
                self.session = message
                self.resume_offer = message.payload.resume
                events.append(Opened(message))
            elif self._reopening == "SESSION":
                self._reopening = "RESUMED"
                events.append(Reopened(message))
            else:
                events.append(ProtocolBreach(None, "a second SESSION frame", shown))
            return events
        if self.session is None:
            events.append(ProtocolBreach(None, "the first frame is not SESSION", shown))
            return events
        if isinstance(message, ResumedMessage):
            events.extend(self._resumed(message, shown))
        elif isinstance(message, StreamMessage):
            events.extend(self._stream(message))
        elif isinstance(message, DoneMessage):
            events.extend(self._done(message))
        elif isinstance(message, InterruptAckMessage):
            interrupt = self.interrupts.pop(str(message.ref), None)
            if interrupt is not None:  # else: the checker has already reported it
                events.append(Acknowledged(interrupt, message.payload))
        elif isinstance(message, ServerHeartbeatMessage):
            if message.ref is not None:
                events.append(HeartbeatAnswered(message.ref))
        elif isinstance(message, ErrorMessage):
            events.append(self._error(message))
        return events

    def _stream(self, message: StreamMessage) -> list[Event]:
        state = self.requests.get(message.request_id)
        if state is None:
            return []  # not ours, or after its DONE: the checker has reported it
        state.last_seq = max(state.last_seq, message.payload.seq)
        if state.ended:
            state.stale_dropped += 1
            return []
        chunk = Chunk(message.payload.seq, message.payload.delta, message.payload.start_ms)
        state.chunks.append(chunk)
        state.parts.append(chunk.delta)
        return [RequestUpdated(state)]

    def _audio(self, data: bytes) -> list[Event]:
        shown = repr(data[:300])
        if self.session is None:
            return [ProtocolBreach(None, "the first frame is not SESSION", shown)]
        try:
            header, samples = decode_audio_frame(data)
        except ProtocolError as exc:
            return [ProtocolBreach(None, f"a malformed AUDIO frame: {exc.message}", shown)]
        events: list[Event] = [
            ProtocolBreach(v.guarantee, v.message, shown)
            for v in self.checker.received(header.model_dump(mode="json"))
        ]
        state = self.requests.get(header.request_id)
        if state is None:
            return events  # not ours, or after its DONE: the checker has reported it
        state.last_audio_seq = max(state.last_audio_seq, header.seq)
        if state.ended:
            state.stale_audio_dropped += 1
            return events
        chunk = AudioChunk.from_frame(header, samples)
        state.audio.append(chunk)
        state.audio_frames += 1
        state.audio_received_ms += chunk.duration_ms
        events.append(RequestUpdated(state))
        return events

    def _done(self, message: DoneMessage) -> list[Event]:
        state = self.requests.pop(message.request_id, None)
        if state is None:
            return []
        state.server_done = DoneInfo.from_payload(message.payload)
        if state.done is None:
            state.done = state.server_done
        return [RequestUpdated(state)]

    def _error(self, message: ErrorMessage) -> Event:
        ref = message.ref
        if ref is not None and ref == self._resume_msg_id:
            self._reopening = None
            self._resume_msg_id = None
            return ResumeRefused(message)
        if ref is not None:
            interrupt = self.interrupts.pop(ref, None)
            if interrupt is not None:
                return InterruptRefused(interrupt, message)
            for state in self.requests.values():
                if state.msg_id == ref:
                    del self.requests[state.request_id]
                    state.error = ErrorInfo(
                        code=str(message.payload.code), message=message.payload.message
                    )
                    return RequestUpdated(state)
        return UnclaimedError(message)

    # ------------------------------------------------------------------ ids

    def _next_msg_id(self) -> str:
        return f"c{next(self._msg_ids)}"

    def _fresh_request_id(self) -> str:
        while True:
            request_id = f"req-{next(self._request_ids)}"
            if request_id not in self.requests:
                return request_id


def _outgoing(msg_id: str, message: BaseModel) -> Outgoing:
    return Outgoing(msg_id, encode(message), message.model_dump(mode="json", exclude_none=True))
