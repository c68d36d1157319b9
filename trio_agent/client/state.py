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
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from trio_agent.protocol.audio import AudioHeader, decode_audio_frame
from trio_agent.protocol.bounds import MAX_REASON_CHARS, REQUEST_ID_PATTERN
from trio_agent.protocol.guarantees import GuaranteeChecker
from trio_agent.protocol.messages import (
    DEFAULT_INTERRUPT_REASON,
    SERVER_MODELS,
    DoneMessage,
    DonePayload,
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
    ServerHeartbeatMessage,
    SessionMessage,
    StreamMessage,
    encode,
    load_json_object,
    now_ms,
)

_REQUEST_ID: Final = re.compile(REQUEST_ID_PATTERN)


# --------------------------------------------------------------------------- what the user sees


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a reply: a STREAM frame's ``seq`` and ``delta``, and, when the
    reply is spoken, ``start_ms``: where its words start in the reply's audio."""

    seq: int
    delta: str
    start_ms: float | None = None


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """One AUDIO frame of a spoken reply: its samples and where they sit in it.

    ``samples`` are raw ``format`` bytes (``pcm_s16le``: signed 16-bit
    little-endian, ``channels`` interleaved) at ``sample_rate``; always use the
    chunk's own rate, servers differ. ``start_ms`` is the chunk's offset in the
    spoken reply and ``duration_ms`` its length, so ``end_ms`` is where the next
    chunk starts.
    """

    seq: int
    start_ms: float
    duration_ms: float
    sample_rate: int
    channels: int
    samples: bytes
    format: str = "pcm_s16le"

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms

    @classmethod
    def from_frame(cls, header: AudioHeader, samples: bytes) -> AudioChunk:
        return cls(
            seq=header.seq,
            start_ms=header.start_ms,
            duration_ms=header.duration_ms,
            sample_rate=header.sample_rate,
            channels=header.channels,
            samples=samples,
            format=header.format,
        )


@dataclass(frozen=True, slots=True)
class DoneInfo:
    """How a request ended: the payload of its DONE frame, or the client's own cut.

    ``local`` is true when the client decided the end itself (an optimistic
    interrupt) and no DONE had been read yet; ``frames`` is then the number of
    chunks that had arrived before the cut.

    A spoken reply's DONE adds ``audio_ms`` (audio the server wrote to the
    socket), ``heard_ms`` (the ``played_ms`` of the INTERRUPT that cut it, capped
    by ``audio_ms``; else ``audio_ms``) and ``heard_text`` (the words whose audio
    lies wholly within ``heard_ms``). A local end leaves them ``None``: only the
    server knows what it wrote; see :attr:`RequestState.server_done`.
    """

    status: DoneStatus
    interrupted: bool
    frames: int
    reason: str | None = None
    error: ErrorInfo | None = None
    local: bool = False
    audio_ms: float | None = None
    heard_ms: float | None = None
    heard_text: str | None = None

    @classmethod
    def from_payload(cls, payload: DonePayload) -> DoneInfo:
        return cls(
            status=payload.status,
            interrupted=payload.interrupted,
            frames=payload.frames,
            reason=payload.reason,
            error=payload.error,
            audio_ms=payload.audio_ms,
            heard_ms=payload.heard_ms,
            heard_text=payload.heard_text,
        )


# --------------------------------------------------------------------------- the client state


@dataclass(eq=False)
class RequestState:
    """One request, from the moment the client queues its REQUEST until the server
    has said its last word about it (its DONE, or an ERROR refusing it)."""

    request_id: str
    msg_id: str
    #: True when the REQUEST asked for speech (``options.voice``).
    voice: bool = False
    #: Chunks that arrived and were not consumed yet. Unbounded on purpose: the
    #: reader must never wait for a slow consumer (see docs/client.md).
    chunks: deque[Chunk] = field(default_factory=deque)
    #: The delta of every chunk that arrived before the request ended locally.
    parts: list[str] = field(default_factory=list)
    #: STREAM frames of this request dropped because they came after the local cut.
    stale_dropped: int = 0
    #: The ``msg_id`` of the INTERRUPT that ended it locally.
    cut_by: str | None = None
    #: The end the user sees: the local cut, or else the server's DONE.
    done: DoneInfo | None = None
    #: The DONE the server sent, once read (after a local cut too).
    server_done: DoneInfo | None = None
    #: The ERROR that refused the REQUEST (``code``/``message``).
    error: ErrorInfo | None = None
    #: Audio chunks that arrived and were not consumed yet (unbounded, like ``chunks``).
    audio: deque[AudioChunk] = field(default_factory=deque)
    #: AUDIO frames that arrived before the request ended locally.
    audio_frames: int = 0
    #: Milliseconds of audio that arrived before the request ended locally.
    audio_received_ms: float = 0.0
    #: Milliseconds of audio the application has taken from ``audio``: the default
    #: playback clock (see :attr:`trio_agent.client.response.Response.played_ms`).
    audio_consumed_ms: float = 0.0
    #: AUDIO frames of this request dropped because they came after the local cut.
    stale_audio_dropped: int = 0

    def take_audio(self) -> AudioChunk:
        """Pop the next audio chunk and advance the consumed-audio clock."""
        chunk = self.audio.popleft()
        self.audio_consumed_ms += chunk.duration_ms
        return chunk

    @property
    def ended(self) -> bool:
        """Over for the user: cut locally, done, or refused."""
        return self.done is not None or self.error is not None

    @property
    def settled(self) -> bool:
        """Over for the server too: its DONE or its ERROR has been read."""
        return self.server_done is not None or self.error is not None

    @property
    def frames(self) -> int:
        """Chunks that arrived before the request ended locally."""
        return len(self.parts)


@dataclass(eq=False)
class InterruptState:
    """One INTERRUPT waiting for its answer."""

    msg_id: str
    request_id: str | None
    reason: str
    #: The requests this INTERRUPT ended locally, in the order they were sent.
    cut: tuple[RequestState, ...]

    @property
    def stale_dropped(self) -> int:
        """Stale frames dropped so far for the requests this INTERRUPT cut locally."""
        return sum(state.stale_dropped for state in self.cut)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A frame to send: its text, and its wire form for the guarantee checker."""

    msg_id: str
    text: str
    frame: Mapping[str, Any]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Opened:
    """The SESSION frame arrived."""

    session: SessionMessage


@dataclass(frozen=True, slots=True)
class RequestUpdated:
    """A chunk arrived for ``state``, or it ended, or the server's last word came."""

    state: RequestState


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The INTERRUPT_ACK of ``interrupt`` arrived."""

    interrupt: InterruptState
    payload: InterruptAckPayload


@dataclass(frozen=True, slots=True)
class InterruptRefused:
    """The server answered ``interrupt`` with an ERROR instead of an ACK."""

    interrupt: InterruptState
    error: ErrorMessage


@dataclass(frozen=True, slots=True)
class HeartbeatAnswered:
    """The server answered the HEARTBEAT whose ``msg_id`` is ``ref``."""

    ref: str


@dataclass(frozen=True, slots=True)
class UnclaimedError:
    """An ERROR that names no REQUEST or INTERRUPT this client is waiting on."""

    error: ErrorMessage


@dataclass(frozen=True, slots=True)
class ProtocolBreach:
    """The server broke protocol v1. ``guarantee`` is the number of the broken
    guarantee in docs/protocol.md, or ``None`` when the frame itself is not a valid
    protocol v1 server frame."""

    guarantee: int | None
    message: str
    frame: str


Event = (
    Opened
    | RequestUpdated
    | Acknowledged
    | InterruptRefused
    | HeartbeatAnswered
    | UnclaimedError
    | ProtocolBreach
)


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
        return state, _outgoing(msg_id, message)

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
        message = InterruptMessage(
            msg_id=msg_id,
            request_id=request_id,
            ts=now_ms(),
            payload=InterruptPayload(
                reason=reason, played_ms=None if played_ms is None else float(played_ms)
            ),
        )
        return interrupt, _outgoing(msg_id, message)

    def heartbeat(self) -> Outgoing:
        """Build a HEARTBEAT frame; its reply comes back as :class:`HeartbeatAnswered`."""
        msg_id = self._next_msg_id()
        return _outgoing(msg_id, HeartbeatMessage(msg_id=msg_id, ts=now_ms()))

    def sending(self, outgoing: Outgoing) -> None:
        """Call right before ``outgoing`` goes on the wire (in wire order), so the
        guarantee checker knows what was sent before any answer can arrive."""
        self.checker.sent(outgoing.frame)

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
                events.append(Opened(message))
            else:
                events.append(ProtocolBreach(None, "a second SESSION frame", shown))
            return events
        if self.session is None:
            events.append(ProtocolBreach(None, "the first frame is not SESSION", shown))
            return events
        if isinstance(message, StreamMessage):
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
