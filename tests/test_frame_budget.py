"""Every WebSocket frame counts: a per-connection frame budget below the message layer.

Empty continuation frames never complete a message, and pings never reach the
session, so neither the size limit nor the session's rate limit sees them; the
frame budget does (docs/security.md, "Floods").
"""

from __future__ import annotations

import json
import random

import pytest
import trio
from handshakes import RawClient, request_bytes
from wsproto.events import CloseConnection

from trio_agent import agents as builtin
from trio_agent.protocol.framing import FrameCounter, close_frame
from trio_agent.testing.wire import connect

#: Client frames are masked; a zero mask key leaves the payload as it is.
_MASK = b"\x00\x00\x00\x00"
TEXT_WITHOUT_FIN = bytes((0x01, 0x80 | 2)) + _MASK + b'{"'
EMPTY_CONTINUATION = bytes((0x00, 0x80)) + _MASK
PING = bytes((0x89, 0x80)) + _MASK


def _masked(payload: bytes, opcode: int = 0x1) -> bytes:
    """One whole client frame (FIN set, masked with a zero key)."""
    n = len(payload)
    if n < 126:
        length = bytes((0x80 | n,))
    elif n < 65536:
        length = bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        length = bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    return bytes((0x80 | opcode,)) + length + _MASK + payload


async def _flood(port: int, first: bytes, each: bytes, count: int) -> int | None:
    """Send ``first``, then ``each`` ``count`` times, reading meanwhile; return the
    close code the server sent (``None``: no close frame came)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = RawClient(stream)
    assert await client.handshake() == 101
    code: int | None = None
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            nonlocal code
            while True:
                try:
                    data = await stream.receive_some()
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    break
                client.ws.receive_data(data)
                for event in client.ws.events():
                    if isinstance(event, CloseConnection):
                        code = event.code
                        nursery.cancel_scope.cancel()
                        return
            nursery.cancel_scope.cancel()

        nursery.start_soon(read)
        chunk = each * 1000
        try:
            await stream.send_all(first)
            for _ in range(count // 1000):
                await stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.move_on_after(5):
            await trio.sleep_forever()
    await stream.aclose()
    return code


@pytest.mark.parametrize(
    ("first", "each"),
    [(TEXT_WITHOUT_FIN, EMPTY_CONTINUATION), (b"", PING)],
    ids=["empty-continuations", "pings"],
)
async def test_a_frame_flood_is_closed_with_1008_while_a_canary_keeps_streaming(
    start_server, log_records, first, each
):
    # The budget counts frames as the server reads them, and the server reads a
    # connection no faster than it handles what came (a pong written per ping):
    # on a loaded machine that may be under the default 1000 frames/s, and the
    # flood, throttled by TCP to the server's own pace, is never over it. A
    # budget far under what even a loaded server reads makes the flood certain:
    # one read of 4 KiB holds 682 pings, over the burst at once.
    server = await start_server(
        {"lorem": builtin.lorem}, ws_frame_rate_per_s=100.0, ws_frame_burst=200
    )
    async with connect(server, "socket") as canary:
        await canary.request("c1", agent="lorem", words=40, words_per_s=100)
        await canary.recv_until(lambda f: f["msg_type"] == "STREAM")
        with trio.fail_after(20):
            code = await _flood(server.port, first, each, 200_000)
        assert code == 1008
        with trio.fail_after(10):
            done = (await canary.until_done("c1"))[-1]
        assert done["payload"]["status"] == "completed"
        assert done["payload"]["frames"] == 40
        await canary.heartbeat()
        with trio.fail_after(5):
            await canary.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")
        canary.assert_guarantees()
    assert [
        r
        for r in log_records
        if r["message"] == "closing a connection that floods WebSocket frames"
    ]
    with trio.fail_after(5):
        await server.wait_idle()


async def test_a_message_over_the_limit_in_bytes_is_closed_with_1009_before_it_is_read(
    start_server,
):
    """trio-websocket counts characters: 4-byte characters under the limit in
    characters, over it in bytes, are refused from the frame header on."""
    server = await start_server({"lorem": builtin.lorem}, max_message_bytes=4096)
    text = json.dumps(
        {"msg_type": "HEARTBEAT", "msg_id": "\N{GRINNING FACE}" * 2000}, ensure_ascii=False
    )
    frame = _masked(text.encode())
    assert len(text) < 4096 < len(frame)
    with trio.fail_after(10):
        code = await _flood(server.port, frame, b"", 0)
    assert code == 1009


async def test_a_client_under_the_frame_budget_is_served(start_server):
    """A message sent in many small fragments is one message, within the budget."""
    server = await start_server({"lorem": builtin.lorem}, ws_frame_burst=200)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    client = RawClient(stream)
    assert await client.handshake() == 101
    text = b'{"msg_type": "HEARTBEAT", "msg_id": "h1"}'
    frames = [
        bytes((0x01 if i == 0 else 0x00, 0x81)) + _MASK + text[i : i + 1] for i in range(len(text))
    ]
    frames[-1] = bytes((0x80, 0x81)) + _MASK + text[-1:]
    await stream.send_all(b"".join(frames))
    received = b""
    with trio.fail_after(5):
        while b'"ref":"h1"' not in received.replace(b" ", b""):
            received += await stream.receive_some()
    await stream.aclose()


def test_the_counter_counts_frames_split_anywhere():
    head = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"
    frames = [_masked(b"a" * n) for n in (0, 1, 125, 126, 65535, 65536, 3)]
    frames += [_masked(close_frame(1000, "bye")[2:], opcode=0x8), PING, EMPTY_CONTINUATION]
    data = head + b"".join(frames)
    rng = random.Random(7)
    for _ in range(50):
        counter = FrameCounter(after_http_head=True)
        pos = total = 0
        while pos < len(data):
            step = rng.randint(1, 3000)
            total += counter.feed(data[pos : pos + step])
            pos += step
        assert total == len(frames)


def test_the_counter_skips_a_head_ended_by_bare_newlines():
    counter = FrameCounter(after_http_head=True)
    assert counter.feed(b"GET /ws HTTP/1.1\nHost: x\n\n" + PING * 3) == 3


def test_frames_that_would_put_the_counter_out_of_step_are_malformed():
    for frame, why in [
        (bytes((0x89, 0x00)) + _MASK, "unmasked"),
        (bytes((0xC1, 0x80)) + _MASK, "RSV"),
        (bytes((0x83, 0x80)) + _MASK, "opcode"),
        (bytes((0x89, 0xFE, 0x00, 0x7E)) + _MASK, "125"),
        (bytes((0x09, 0x80)) + _MASK, "fragmented"),
    ]:
        counter = FrameCounter()
        counter.feed(frame)
        assert counter.malformed is not None, why
        assert counter.feed(PING * 10) == 0, why


def test_an_upgrade_request_with_a_body_is_malformed():
    for header in (b"Content-Length: 6", b"transfer-encoding: chunked"):
        counter = FrameCounter(after_http_head=True)
        counter.feed(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n" + PING)
        assert counter.malformed == "an upgrade request with a body"
    counter = FrameCounter(after_http_head=True)
    assert counter.feed(b"GET /ws HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + PING) == 1
    assert counter.malformed is None


async def test_an_upgrade_request_with_a_body_gets_no_session(start_server):
    server = await start_server({"lorem": builtin.lorem})
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    head = request_bytes(f"127.0.0.1:{server.port}", headers=[("Content-Length", "6")])
    await stream.send_all(head + PING)
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            received += chunk
    assert b" 101 " not in received.split(b"\r\n", 1)[0]
    assert server.sessions_total == 0
