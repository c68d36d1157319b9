"""Protocol v1.1 AUDIO frames: the binary codec, with no I/O.

The layout is in docs/protocol.md ("AUDIO"). Decoding raises nothing but
:class:`~trio_agent.protocol.messages.ProtocolError` (``INVALID_MESSAGE``).
"""

from __future__ import annotations

import math
import struct
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from pydantic_core import to_json

from trio_agent.protocol.bounds import RequestId, id_echo
from trio_agent.protocol.messages import ErrorCode, ProtocolError, load_json_object

#: The only sample format of protocol v1.1: signed 16-bit little-endian PCM.
PCM_S16LE: Final = "pcm_s16le"
#: Bytes per sample of ``pcm_s16le``.
SAMPLE_BYTES: Final = 2
#: The header length prefix: an unsigned 16-bit big-endian integer.
_LENGTH = struct.Struct(">H")
#: The largest header the 2-byte prefix can describe.
MAX_HEADER_BYTES: Final = 0xFFFF
#: How far a header's ``duration_ms`` may stray from the samples' (float rounding only).
_DURATION_TOLERANCE_MS: Final = 1e-6


class AudioHeader(BaseModel):
    """The JSON header of an AUDIO frame; field order is the order on the wire."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    msg_type: Literal["AUDIO"] = "AUDIO"
    request_id: RequestId
    seq: Annotated[StrictInt, Field(ge=0)]
    start_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    duration_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    format: Literal["pcm_s16le"] = PCM_S16LE
    sample_rate: Annotated[StrictInt, Field(gt=0, le=384_000)]
    channels: Annotated[StrictInt, Field(ge=1, le=8)] = 1


def pcm_duration_ms(n_bytes: int, sample_rate: int, channels: int) -> float:
    """Milliseconds of ``pcm_s16le`` audio in ``n_bytes``: samples x 1000 / sample_rate.

    Fractional where it must be (441 samples at 22050 Hz are exactly 20.0 ms;
    1 sample at 22050 Hz is 0.04535... ms). Raises ``ValueError`` when the bytes
    do not make whole sample frames.
    """
    frame_bytes = SAMPLE_BYTES * channels
    if n_bytes < 0 or n_bytes % frame_bytes:
        raise ValueError(
            f"{n_bytes} bytes is not a whole number of {channels}-channel s16 sample frames"
        )
    return (n_bytes // frame_bytes) * 1000 / sample_rate


def encode_audio_frame(header: AudioHeader, samples: bytes) -> bytes:
    """The bytes of one AUDIO binary message: length prefix, JSON header, samples.

    Raises ``ValueError`` when the samples are not whole s16 sample frames for the
    header's channel count, or the header does not fit the 2-byte length prefix.
    """
    pcm_duration_ms(len(samples), header.sample_rate, header.channels)  # validates alignment
    head = header.model_dump_json().encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"an AUDIO header of {len(head)} bytes does not fit in 2 bytes")
    return b"".join((_LENGTH.pack(len(head)), head, samples))


class AudioFrameEncoder:
    """Renders the AUDIO frames of one request: the speech stage's hot path.

    The same bytes as ``encode_audio_frame(AudioHeader(...), samples)`` (a test
    checks it), without building and validating a model per chunk: the parts that
    do not change during a request are rendered once.
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, request_id: str, sample_rate: int, channels: int = 1) -> None:
        template = AudioHeader(
            request_id=request_id,
            seq=0,
            start_ms=0,
            duration_ms=0,
            sample_rate=sample_rate,
            channels=channels,
        ).model_dump_json()
        self._head = template.split('"seq":', 1)[0] + '"seq":'
        self._tail = ',"format":' + template.split(',"format":', 1)[1]

    def __call__(self, *, seq: int, start_ms: float, duration_ms: float, samples: bytes) -> bytes:
        head = (
            f'{self._head}{seq:d},"start_ms":{_float(start_ms)},'
            f'"duration_ms":{_float(duration_ms)}{self._tail}'
        ).encode()
        return b"".join((_LENGTH.pack(len(head)), head, samples))


def _float(value: float) -> str:
    return to_json(float(value)).decode()


def decode_audio_frame(data: bytes) -> tuple[AudioHeader, bytes]:
    """Split one AUDIO binary message into its header and its sample bytes.

    Raises :class:`ProtocolError` (``INVALID_MESSAGE``) for anything that is not a
    well-formed AUDIO frame; ``request_id`` is filled in when it could be read.
    """
    if len(data) < _LENGTH.size:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"a binary frame of {len(data)} bytes is too short for the 2-byte header length",
        )
    (head_len,) = _LENGTH.unpack_from(data)
    end = _LENGTH.size + head_len
    if end > len(data):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"the header length {head_len} runs past the end of a {len(data)}-byte frame",
        )
    try:
        obj = load_json_object(bytes(data[_LENGTH.size : end]))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"the AUDIO header is not UTF-8 JSON: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "the AUDIO header must be a JSON object")
    request_id = id_echo(obj.get("request_id"))
    if obj.get("msg_type") != "AUDIO":
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "a binary frame's header must have msg_type AUDIO",
            request_id=request_id,
        )
    try:
        header = AudioHeader.model_validate(obj)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'header'}: {e['msg']}"
            for e in exc.errors(include_url=False)[:3]
        )
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"bad AUDIO header: {where}", request_id=request_id
        ) from None
    samples = bytes(data[end:])
    try:
        duration = pcm_duration_ms(len(samples), header.sample_rate, header.channels)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc), request_id=request_id) from None
    if not math.isclose(duration, header.duration_ms, rel_tol=0, abs_tol=_DURATION_TOLERANCE_MS):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"duration_ms {header.duration_ms} does not match the {duration} ms of samples",
            request_id=request_id,
        )
    return header, samples
