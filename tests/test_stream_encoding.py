"""The STREAM fast path renders exactly what the model renders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import PydanticSerializationError

from trio_agent.protocol.bounds import REQUEST_ID_PATTERN
from trio_agent.protocol.messages import StreamFrameEncoder, StreamMessage, StreamPayload, encode


def by_model(session_id: str, request_id: str, msg_id: str, ts: int, seq: int, delta: str) -> str:
    return encode(
        StreamMessage(
            msg_id=msg_id,
            session_id=session_id,
            request_id=request_id,
            ts=ts,
            payload=StreamPayload(seq=seq, delta=delta),
        )
    )


@given(
    session_id=st.text(),
    request_id=st.from_regex(REQUEST_ID_PATTERN, fullmatch=True),
    msg_id=st.text(min_size=1),
    ts=st.integers(min_value=0, max_value=2**53),
    seq=st.integers(min_value=0, max_value=2**40),
    delta=st.text(),
)
def test_fast_path_is_byte_for_byte_the_model(session_id, request_id, msg_id, ts, seq, delta):
    fast = StreamFrameEncoder(session_id, request_id)(msg_id=msg_id, ts=ts, seq=seq, delta=delta)
    assert fast == by_model(session_id, request_id, msg_id, ts, seq, delta)


def test_text_that_cannot_be_utf8_is_refused_like_the_model_refuses_it():
    encoder = StreamFrameEncoder("s", "r")
    with pytest.raises(PydanticSerializationError):
        encoder(msg_id="m", ts=0, seq=0, delta="\ud800")
    with pytest.raises(PydanticSerializationError):
        by_model("s", "r", "m", 0, 0, "\ud800")
