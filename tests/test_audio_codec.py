"""The AUDIO binary frame codec: a round trip, and every malformed frame a coded error."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.protocol.audio import (
    AudioFrameEncoder,
    AudioHeader,
    decode_audio_frame,
    encode_audio_frame,
    pcm_duration_ms,
)
from trio_agent.protocol.messages import ErrorCode, ProtocolError


def header(**overrides: object) -> AudioHeader:
    fields: dict[str, object] = {
        "request_id": "r1",
        "seq": 0,
        "start_ms": 0.0,
        "duration_ms": 20.0,
        "sample_rate": 16000,
        "channels": 1,
    }
    fields.update(overrides)
    return AudioHeader.model_validate(fields)


def raw(head: dict[str, object] | bytes, samples: bytes = b"") -> bytes:
    body = head if isinstance(head, bytes) else json.dumps(head).encode()
    return struct.pack(">H", len(body)) + body + samples


def refused(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_audio_frame(data)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    return info.value


def test_byte_layout_is_length_prefix_json_header_then_samples():
    samples = b"\x01\x00" * 320
    data = encode_audio_frame(header(), samples)
    (n,) = struct.unpack(">H", data[:2])
    head = json.loads(data[2 : 2 + n])
    assert head == {
        "msg_type": "AUDIO",
        "request_id": "r1",
        "seq": 0,
        "start_ms": 0.0,
        "duration_ms": 20.0,
        "format": "pcm_s16le",
        "sample_rate": 16000,
        "channels": 1,
    }
    assert data[2 + n :] == samples


@given(
    n_samples=st.integers(0, 2000),
    rate=st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]),
    channels=st.integers(1, 2),
    seq=st.integers(0, 10**6),
    start=st.floats(0, 1e7, allow_nan=False),
)
def test_round_trip(n_samples: int, rate: int, channels: int, seq: int, start: float):
    samples = bytes(range(256)) * (n_samples * 2 * channels // 256) + bytes(
        n_samples * 2 * channels % 256
    )
    duration = pcm_duration_ms(len(samples), rate, channels)
    h = header(seq=seq, start_ms=start, duration_ms=duration, sample_rate=rate, channels=channels)
    assert decode_audio_frame(encode_audio_frame(h, samples)) == (h, samples)


def test_duration_is_exact_and_fractional_where_it_must_be():
    assert pcm_duration_ms(441 * 2, 22050, 1) == 20.0
    assert pcm_duration_ms(320 * 2, 16000, 1) == 20.0
    assert pcm_duration_ms(2, 22050, 1) == 1000 / 22050
    assert pcm_duration_ms(640 * 2, 16000, 2) == 20.0  # 640 samples = 320 stereo frames
    with pytest.raises(ValueError, match="whole number"):
        pcm_duration_ms(3, 16000, 1)


def test_encode_refuses_odd_sample_bytes():
    with pytest.raises(ValueError, match="whole number"):
        encode_audio_frame(header(), b"\x00\x00\x00")


GOOD = {
    "msg_type": "AUDIO",
    "request_id": "r1",
    "seq": 0,
    "start_ms": 0,
    "duration_ms": 0.0625,
    "format": "pcm_s16le",
    "sample_rate": 16000,
    "channels": 1,
}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x10{}",  # header length past the end
        raw(b"\xff\xfe{}"),  # not UTF-8
        raw(b"{nope"),  # not JSON
        raw(b"[1, 2]"),  # not an object
        raw({**GOOD, "msg_type": "STREAM"}, b"\x00\x00"),
        raw({k: v for k, v in GOOD.items() if k != "msg_type"}, b"\x00\x00"),
        raw({**GOOD, "format": "opus"}, b"\x00\x00"),
        raw({**GOOD, "seq": -1}, b"\x00\x00"),
        raw({**GOOD, "seq": "0"}, b"\x00\x00"),
        raw({**GOOD, "sample_rate": 0}, b"\x00\x00"),
        raw({**GOOD, "request_id": "bad id!"}, b"\x00\x00"),
        raw(GOOD, b"\x00\x00\x00"),  # odd sample bytes
        raw(GOOD, b"\x00\x00" * 2),  # duration_ms does not match
        raw(b'{"msg_type": "AUDIO", "start_ms": NaN}'),
    ],
)
def test_malformed_frames_are_invalid_message(data: bytes):
    refused(data)


def test_request_id_is_reported_when_readable():
    assert refused(raw(GOOD, b"\x00")).request_id == "r1"


def test_the_good_frame_of_the_table_decodes():
    head, samples = decode_audio_frame(raw(GOOD, b"\x00\x00"))
    assert head.duration_ms == 1000 / 16000
    assert samples == b"\x00\x00"


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes):
    code = None
    try:
        decode_audio_frame(data)
    except ProtocolError as exc:
        code = exc.code
    assert code in (None, ErrorCode.INVALID_MESSAGE)


@given(
    seq=st.integers(0, 10**9),
    start=st.floats(0, 1e9, allow_nan=False),
    n_samples=st.integers(0, 500),
    rate=st.sampled_from([16000, 22050]),
    request_id=st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
)
def test_the_fast_encoder_gives_the_bytes_of_the_model(seq, start, n_samples, rate, request_id):
    samples = b"\x01\x02" * n_samples
    duration = pcm_duration_ms(len(samples), rate, 1)
    fast = AudioFrameEncoder(request_id, rate)(
        seq=seq, start_ms=start, duration_ms=duration, samples=samples
    )
    model = AudioHeader(
        request_id=request_id, seq=seq, start_ms=start, duration_ms=duration, sample_rate=rate
    )
    assert fast == encode_audio_frame(model, samples)
    assert decode_audio_frame(fast) == (model, samples)
