"""Protocol v1: every wire message as a pydantic model, and the pure parser.

No I/O: parsing and encoding are plain functions. ``docs/protocol.md`` is the
human-readable contract; this module is its executable twin, field for field.
"""

from __future__ import annotations

import time
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from pydantic_core import from_json, to_json

from trio_agent.protocol.bounds import (
    MAX_ID_CHARS,
    MAX_OPTION_VALUES,
    MAX_REASON_CHARS,
    FiniteNumber,
    MsgId,
    RequestId,
    check_options,
    id_echo,
)

PROTOCOL_VERSION: Final = "1.2"

#: The default reason of an INTERRUPT that gives none.
DEFAULT_INTERRUPT_REASON: Final = "USER_NEW_INPUT"


class ErrorCode(StrEnum):
    """The ``code`` of an ERROR frame (and of ``DONE.error`` where it applies)."""

    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_MSG_TYPE = "UNKNOWN_MSG_TYPE"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    DUPLICATE_REQUEST_ID = "DUPLICATE_REQUEST_ID"
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
    UNKNOWN_AGENT = "UNKNOWN_AGENT"
    UNKNOWN_VOICE = "UNKNOWN_VOICE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    RATE_LIMITED = "RATE_LIMITED"
    #: A RESUME for a session this server does not hold (never existed, window
    #: expired, resumption off): start over. Followed by a close with 1008.
    RESUME_UNKNOWN = "RESUME_UNKNOWN"
    #: A RESUME with a wrong or already used token. Followed by a close with 1008.
    RESUME_DENIED = "RESUME_DENIED"
    # Codes that only appear inside DONE.error, never as an ERROR frame:
    #: The frames a resuming client missed are no longer all in the replay buffer.
    RESUME_GAP = "RESUME_GAP"
    #: v1.2, cluster: the node running the request died; its DONE says how many frames it wrote.
    NODE_LOST = "NODE_LOST"
    AGENT_ERROR = "AGENT_ERROR"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    UPSTREAM_PROTOCOL = "UPSTREAM_PROTOCOL"


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown, idle timeout
    POLICY_VIOLATION = 1008  # a client that breaks the rules (floods, stops reading)
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    #: v1.2, cluster: the node is draining (a deploy); resume on another node.
    SERVICE_RESTART = 1012
    #: v1.2: another connection resumed this session (the old one is often a
    #: half-open zombie).
    RESUMED_ELSEWHERE = 4001


class DoneStatus(StrEnum):
    """How a request ended; the ``status`` of its DONE frame."""

    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    TIMEOUT = "timeout"
    FAILED = "failed"
    SHUTDOWN = "shutdown"


class TargetOutcome(StrEnum):
    """Why a request named by an INTERRUPT was not cut (``INTERRUPT_ACK.targets``)."""

    UNKNOWN = "unknown"
    ALREADY_DONE = "already_done"


# --------------------------------------------------------------------------- client -> server


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _ClientEnvelope(_Model):
    msg_id: MsgId | None = None
    session_id: MsgId | None = None
    request_id: RequestId | None = None
    ref: MsgId | None = None
    ts: FiniteNumber | None = None


class RequestPayload(_Model):
    input: StrictStr
    agent: StrictStr | None = None
    options: Annotated[dict[str, Any], Field(strict=True), AfterValidator(check_options)] = Field(
        default_factory=dict
    )
    timeout_s: Annotated[FiniteNumber, Field(gt=0)] | None = None


class RequestMessage(_ClientEnvelope):
    """REQUEST: start a request; the client chooses its ``request_id``."""

    msg_type: Literal["REQUEST"] = "REQUEST"
    request_id: RequestId
    payload: RequestPayload


class InterruptPayload(_Model):
    reason: Annotated[StrictStr, StringConstraints(max_length=MAX_REASON_CHARS)] = (
        DEFAULT_INTERRUPT_REASON
    )
    #: The client's playback position in the named request's audio (v1.1); only
    #: counts when the INTERRUPT names one request.
    played_ms: Annotated[FiniteNumber, Field(ge=0)] | None = None


class InterruptMessage(_ClientEnvelope):
    """INTERRUPT: cut one request (``request_id``) or, with none, all of the session's."""

    msg_type: Literal["INTERRUPT"] = "INTERRUPT"
    msg_id: MsgId
    payload: InterruptPayload = InterruptPayload()


class HeartbeatMessage(_ClientEnvelope):
    """HEARTBEAT: answered at once by a HEARTBEAT whose ``ref`` is this ``msg_id``."""

    msg_type: Literal["HEARTBEAT"] = "HEARTBEAT"
    msg_id: MsgId
    payload: dict[str, Any] = Field(default_factory=dict)


#: A client's position in one request's sequence: the last ``seq`` it received, -1: none.
LastSeq = Annotated[StrictInt, Field(ge=-1)]


class ResumePayload(_Model):
    token: Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
    #: Each request the client still expects frames of, and its last STREAM ``seq``.
    last_seq: Annotated[dict[RequestId, LastSeq], Field(max_length=MAX_OPTION_VALUES)] = Field(
        default_factory=dict
    )
    #: The same for a spoken reply's AUDIO frames, which keep their own sequence.
    last_audio_seq: Annotated[dict[RequestId, LastSeq], Field(max_length=MAX_OPTION_VALUES)] = (
        Field(default_factory=dict)
    )


class ResumeMessage(_ClientEnvelope):
    """RESUME (v1.2): the first frame of a new connection that takes over a session."""

    msg_type: Literal["RESUME"] = "RESUME"
    msg_id: MsgId
    session_id: MsgId
    payload: ResumePayload


ClientMessage = RequestMessage | InterruptMessage | HeartbeatMessage | ResumeMessage

_CLIENT_MODELS: Final[dict[str, type[ClientMessage]]] = {
    "REQUEST": RequestMessage,
    "INTERRUPT": InterruptMessage,
    "HEARTBEAT": HeartbeatMessage,
    "RESUME": ResumeMessage,
}


# --------------------------------------------------------------------------- server -> client


class _ServerEnvelope(_Model):
    msg_id: str
    session_id: str
    request_id: str | None = None
    ref: str | None = None
    ts: int


class AgentEntry(_Model):
    """One agent as the SESSION frame lists it."""

    description: str = ""
    available: bool = True
    unavailable_reason: str | None = None


class Limits(_Model):
    """The limits a client must respect; sent in the SESSION frame."""

    max_message_bytes: int
    max_input_bytes: int
    max_concurrent_requests: int
    stream_lane_capacity: int
    request_timeout_cap_s: float
    #: Left out of the frame when the server has none (every ``None`` is left out).
    idle_timeout_s: float | None = None


class AudioFormat(_Model):
    """One audio format the server speaks in (``SESSION.audio_formats``)."""

    format: Literal["pcm_s16le"] = "pcm_s16le"
    sample_rate: int
    channels: int = 1


class ResumeOffer(_Model):
    """How to resume this session after a dropped connection (v1.2)."""

    #: A secret of at least 128 bits, URL-safe; it changes on every resume.
    token: str
    #: How long the session waits for a resume once its connection is gone.
    window_s: float


class SessionPayload(_Model):
    protocol: str = PROTOCOL_VERSION
    server: str
    agents: dict[str, AgentEntry]
    default_agent: str | None = None
    limits: Limits
    # Speech (v1.1): empty, and left out where None, when the server does not speak.
    voices: list[str] = Field(default_factory=list)
    default_voice: str | None = None
    audio_formats: list[AudioFormat] = Field(default_factory=list)
    synthesizer: Literal["espeak-ng", "builtin"] | None = None
    #: v1.2: left out when resumption is off.
    resume: ResumeOffer | None = None


class SessionMessage(_ServerEnvelope):
    """SESSION: the first frame of every session."""

    msg_type: Literal["SESSION"] = "SESSION"
    payload: SessionPayload


class StreamPayload(_Model):
    seq: int
    delta: str
    #: Where the word's audio starts in the spoken reply (v1.1; spoken replies only).
    start_ms: float | None = None


class StreamMessage(_ServerEnvelope):
    """STREAM: one delta of a request's reply; ``seq`` counts from 0 per request."""

    msg_type: Literal["STREAM"] = "STREAM"
    request_id: str
    payload: StreamPayload


class ErrorInfo(_Model):
    #: An agent may add fields of its own (``AgentError(code, message, **details)``),
    #: e.g. ``upstream_status``.
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class DonePayload(_Model):
    #: An agent may add fields of its own (``ResponseStream.add_done_fields``), e.g.
    #: ``upstream_cancelled``; they never replace the fields below.
    model_config = ConfigDict(extra="allow")

    status: DoneStatus
    interrupted: StrictBool
    reason: str | None = None
    frames: int
    error: ErrorInfo | None = None
    #: The ``msg_id`` of the INTERRUPT that cut the request (additive to v1).
    cancelled_by: str | None = None
    # A spoken reply only (v1.1): audio written, audio heard, the words heard.
    audio_ms: float | None = None
    heard_ms: float | None = None
    heard_text: str | None = None


class DoneMessage(_ServerEnvelope):
    """DONE: the one terminal frame of a request."""

    msg_type: Literal["DONE"] = "DONE"
    request_id: str
    payload: DonePayload


class InterruptAckPayload(_Model):
    interrupted: list[str]
    interrupted_count: int
    reason: str
    targets: dict[str, TargetOutcome]


class InterruptAckMessage(_ServerEnvelope):
    """INTERRUPT_ACK: exactly one per INTERRUPT, ``ref`` = the INTERRUPT's ``msg_id``."""

    msg_type: Literal["INTERRUPT_ACK"] = "INTERRUPT_ACK"
    payload: InterruptAckPayload


class ServerHeartbeatMessage(_ServerEnvelope):
    """HEARTBEAT reply: ``ref`` = the client's HEARTBEAT ``msg_id``."""

    msg_type: Literal["HEARTBEAT"] = "HEARTBEAT"
    payload: dict[str, Any] = Field(default_factory=dict)


class ResumedPayload(_Model):
    #: Each request the RESUME named (and any other of the session): still running,
    #: or ended (its DONE is in the replay, or was received).
    requests: dict[str, Literal["running", "done"]]
    #: INTERRUPTs processed while the client may have missed their ACK: each
    #: INTERRUPT's ``msg_id`` and the request ids it cut.
    interrupts: dict[str, list[str]] = Field(default_factory=dict)
    #: The next resume's token (the one just used is spent).
    resume: ResumeOffer


class ResumedMessage(_ServerEnvelope):
    """RESUMED (v1.2): the answer to a RESUME; ``ref`` = its ``msg_id``. The replay follows."""

    msg_type: Literal["RESUMED"] = "RESUMED"
    payload: ResumedPayload


class ErrorPayload(_Model):
    code: ErrorCode
    message: str


class ErrorMessage(_ServerEnvelope):
    """ERROR: a frame the server could not accept; ``ref``/``request_id`` where known."""

    msg_type: Literal["ERROR"] = "ERROR"
    payload: ErrorPayload


ServerMessage = (
    SessionMessage
    | StreamMessage
    | DoneMessage
    | InterruptAckMessage
    | ServerHeartbeatMessage
    | ErrorMessage
    | ResumedMessage
)

SERVER_MODELS: Final[dict[str, type[ServerMessage]]] = {
    "SESSION": SessionMessage,
    "STREAM": StreamMessage,
    "DONE": DoneMessage,
    "INTERRUPT_ACK": InterruptAckMessage,
    "HEARTBEAT": ServerHeartbeatMessage,
    "ERROR": ErrorMessage,
    "RESUMED": ResumedMessage,
}


# --------------------------------------------------------------------------- parsing


class ProtocolError(Exception):
    """A client frame the server cannot accept, with the code its ERROR frame carries.

    ``ref`` and ``request_id`` are filled in whenever they could be read from the
    offending frame, so the client can tell which of its messages was refused.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        ref: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref
        self.request_id = request_id


def load_json_object(raw: str | bytes) -> Any:
    """Decode strict JSON; raise ``ValueError`` on anything else.

    No ``NaN`` or ``Infinity``, no text that is not UTF-8, and no string escape of a
    lone surrogate (``"\\ud800"`` without its pair): it would decode to a text that
    is not Unicode, which no reply could carry back. pydantic-core's parser checks
    all of it in the one pass that decodes the text, at native speed, whatever the
    size of the frame. Nesting deeper than 200 levels is refused too.
    """
    try:
        return from_json(raw, allow_inf_nan=False, cache_strings="keys")
    except TypeError as exc:  # a str that holds a lone surrogate itself
        raise ValueError(str(exc)) from None


def _describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        where = ".".join(str(p)[:MAX_ID_CHARS] for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one client text frame into a typed message.

    Raises :class:`ProtocolError` with the code the protocol prescribes:
    ``INVALID_JSON`` for text that is not JSON, ``INVALID_MESSAGE`` for JSON that is
    not an object or has a missing or mistyped field, ``UNKNOWN_MSG_TYPE`` for a
    ``msg_type`` a client may not send. Never raises anything else.
    """
    try:
        obj = load_json_object(raw)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"not valid JSON text: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"a message must be a JSON object, not {type(obj).__name__}"
        )
    # Read before the frame is validated, to name it in the ERROR; cut, so that the
    # echo stays small whatever the frame holds.
    ref, rid = id_echo(obj.get("msg_id")), id_echo(obj.get("request_id"))
    msg_type = obj.get("msg_type")
    if not isinstance(msg_type, str):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "msg_type is required and must be a string",
            ref=ref,
            request_id=rid,
        )
    model = _CLIENT_MODELS.get(msg_type)
    if model is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_MSG_TYPE,
            f"{msg_type[:64]!r} is not a message type a client may send "
            f"(expected one of {', '.join(_CLIENT_MODELS)})",
            ref=ref,
            request_id=rid,
        )
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, _describe_validation_error(exc), ref=ref, request_id=rid
        ) from None


def parse_server_message(raw: str | bytes) -> ServerMessage:
    """Parse one server frame (the client side of the protocol).

    Raises ``ValueError`` (``pydantic.ValidationError`` is one) when the frame is not
    a valid protocol v1 server message.
    """
    obj = load_json_object(raw)
    if not isinstance(obj, dict):
        raise ValueError("a server message must be a JSON object")
    model = SERVER_MODELS.get(obj.get("msg_type"))  # type: ignore[arg-type]
    if model is None:
        raise ValueError(f"unknown server msg_type {obj.get('msg_type')!r}")
    return model.model_validate(obj)


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, the unit of every ``ts`` field."""
    return time.time_ns() // 1_000_000


def encode(message: BaseModel) -> str:
    """Serialize a wire message to its JSON text, leaving out fields that are ``None``."""
    return message.model_dump_json(exclude_none=True)


class StreamFrameEncoder:
    """Renders the STREAM frames of one request: the server's hot path.

    A server sends one STREAM frame per delta, and building a :class:`StreamMessage`
    and dumping it costs about 10 us, most of it in model construction. This renders
    the same text (byte for byte what ``encode(StreamMessage(...))`` gives, which a
    test checks for arbitrary deltas) in about 1.5 us: the parts that do not change
    during a request are rendered once, and every string goes through pydantic-core's
    JSON encoder, so escaping and errors (a lone surrogate raises
    ``PydanticSerializationError``) are the model's own.
    """

    __slots__ = ("_middle",)

    def __init__(self, session_id: str, request_id: str) -> None:
        self._middle = f',"session_id":{_json(session_id)},"request_id":{_json(request_id)},"ts":'

    def __call__(
        self, *, msg_id: str, ts: int, seq: int, delta: str, start_ms: float | None = None
    ) -> str:
        start = "" if start_ms is None else f',"start_ms":{to_json(float(start_ms)).decode()}'
        return (
            f'{{"msg_id":{_json(msg_id)}{self._middle}{ts:d},"msg_type":"STREAM",'
            f'"payload":{{"seq":{seq:d},"delta":{_json(delta)}{start}}}}}'
        )


def _json(text: str) -> str:
    return to_json(text).decode()
