"""The writer's own WebSocket framing gives wsproto's bytes, and a client reads it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from trio_agent.protocol.framing import websocket_frame

#: Around every length encoding of RFC 6455: 7 bits, 16 bits, 64 bits.
EDGES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def wsproto_frame(message: str | bytes) -> bytes:
    server = Connection(ConnectionType.SERVER)
    event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
    return server.send(event)


def test_every_length_encoding_matches_wsproto():
    for n in EDGES:
        for message in ("x" * n, b"\x00" * n, "é" * (n // 2)):
            assert websocket_frame(message) == wsproto_frame(message), n


@given(st.one_of(st.text(), st.binary(max_size=300)))
def test_any_message_matches_wsproto(message):
    assert websocket_frame(message) == wsproto_frame(message)


@given(st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), max_size=8))
def test_a_client_reads_a_batch_of_frames_back_as_the_messages(messages):
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(b"".join(websocket_frame(m) for m in messages))
    received = []
    for event in client.events():
        assert isinstance(event, TextMessage | BytesMessage)
        assert event.message_finished
        received.append(event.data)
    assert received == messages


def test_a_lone_surrogate_cannot_be_framed():
    with pytest.raises(UnicodeEncodeError):
        websocket_frame("\ud800")
