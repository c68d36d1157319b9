"""Validation at the edge: bounded ids and reasons, strict numbers, byte-counted
sizes and well-formed handshakes.

Every client string the server keeps or sends back (``msg_id``, ``request_id``,
``session_id``, an INTERRUPT's ``reason``) is bounded when the frame is parsed, so
an ERROR, an ACK or a DONE can never echo more than a few hundred characters of
what a client sent. Each test talks to a real server over a socket, except the
few that check the parser's own answer.
"""

from __future__ import annotations

import json

import pytest
import trio
from handshakes import Response
from testing_agents import endless

from trio_agent import agents as builtin
from trio_agent.protocol.bounds import (
    MAX_ID_CHARS,
    MAX_OPTION_STRING_BYTES,
    MAX_OPTION_VALUES,
    MAX_REASON_CHARS,
)
from trio_agent.protocol.messages import ErrorCode, ProtocolError, parse_client_message
from trio_agent.testing.wire import WireClient, connect


def agent_set():
    return {"lorem": builtin.lorem, "echo": builtin.echo, "endless": endless()}


async def error_for(client: WireClient, frame: dict[str, object] | str) -> dict[str, object]:
    """Send ``frame`` (a dict, or raw text) and return the ERROR it gets."""
    if isinstance(frame, str):
        await client.send_raw(frame)
    else:
        await client.send_raw(json.dumps(frame))
    found = await client.recv_until(lambda f: f["msg_type"] in ("ERROR", "INTERRUPT_ACK", "DONE"))
    assert found[-1]["msg_type"] == "ERROR", found[-1]
    return found[-1]


def refusal(raw: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(raw)
    return refused.value


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("field", ["msg_id", "request_id"])
async def test_a_huge_id_is_refused_and_its_echo_is_cut(start_server, field):
    server = await start_server(agent_set())
    huge = "x" * 100_000
    async with connect(server, "socket") as c:
        frame = {"msg_type": "INTERRUPT", "msg_id": "i1", "request_id": "r1", field: huge}
        error = await error_for(c, frame)
        assert error["payload"]["code"] == "INVALID_MESSAGE"
        echoed = error["ref" if field == "msg_id" else "request_id"]
        assert echoed == huge[:MAX_ID_CHARS]
        assert len(json.dumps(error)) < 1_000
        # The session goes on.
        await c.request("ok", words=2, words_per_s=0)
        assert (await c.until_done("ok"))[-1]["payload"]["status"] == "completed"


async def test_an_id_outside_the_alphabet_is_refused(start_server):
    server = await start_server(agent_set())
    async with connect(server, "socket") as c:
        for msg_id in ["with space", "new\nline", "é", "\U0001f600", "x" * (MAX_ID_CHARS + 1)]:
            error = await error_for(c, {"msg_type": "HEARTBEAT", "msg_id": msg_id})
            assert error["payload"]["code"] == "INVALID_MESSAGE"
            assert "msg_id" in error["payload"]["message"]
        # Every id the clients make, and the longest one allowed, stay valid.
        for msg_id in ["c0", "req-1", "abc123-7", "a.b:c_d-e", "x" * MAX_ID_CHARS]:
            await c.send_raw(json.dumps({"msg_type": "HEARTBEAT", "msg_id": msg_id}))
            reply = (await c.recv_until(lambda f: f["msg_type"] in ("HEARTBEAT", "ERROR")))[-1]
            assert (reply["msg_type"], reply["ref"]) == ("HEARTBEAT", msg_id)


def test_session_id_and_ref_follow_the_id_rules():
    for field in ["session_id", "ref"]:
        for bad in ["x" * (MAX_ID_CHARS + 1), "a b", ""]:
            frame = {"msg_type": "HEARTBEAT", "msg_id": "h", field: bad}
            refused = refusal(json.dumps(frame))
            assert refused.code is ErrorCode.INVALID_MESSAGE
            assert field in refused.message
        frame = {"msg_type": "HEARTBEAT", "msg_id": "h", field: "6f1c2a9e0b7d4c3a"}
        assert getattr(parse_client_message(json.dumps(frame)), field) == "6f1c2a9e0b7d4c3a"


def test_an_echo_of_an_unreadable_frame_is_cut_too():
    huge = "é" * 10_000
    for frame in [
        {"msg_type": "NOPE", "msg_id": huge, "request_id": huge},
        {"msg_id": huge, "request_id": huge},
        {"msg_type": "REQUEST", "msg_id": huge, "request_id": huge},
    ]:
        refused = refusal(json.dumps(frame))
        assert refused.ref == huge[:MAX_ID_CHARS]
        assert refused.request_id == huge[:MAX_ID_CHARS]


# --------------------------------------------------------------------------- reason


async def test_a_reason_over_the_limit_is_refused_and_not_echoed(start_server):
    server = await start_server(agent_set())
    async with connect(server, "socket") as c:
        await c.request("r1", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        long = "é" * (MAX_REASON_CHARS + 1)
        frame = {"msg_type": "INTERRUPT", "msg_id": "i1", "payload": {"reason": long}}
        error = await error_for(c, frame)
        assert error["payload"]["code"] == "INVALID_MESSAGE"
        assert error["ref"] == "i1"
        assert long not in json.dumps(error, ensure_ascii=False)
        # The longest reason allowed is acted on and comes back whole.
        longest = "é" * MAX_REASON_CHARS
        msg_id = await c.interrupt("r1", reason=longest)
        ack = (await c.until_ack(msg_id))[-1]
        assert ack["payload"]["reason"] == longest
        done = (await c.until_done("r1"))[-1]
        assert done["payload"]["reason"] == longest


# --------------------------------------------------------------------------- sizes in bytes


async def test_the_message_size_limit_counts_utf8_bytes_not_characters(start_server):
    server = await start_server(agent_set(), max_message_bytes=1_000)
    async with connect(server, "socket") as c:
        # 300 characters but 1,200 bytes: over the limit.
        frame = json.dumps({"msg_type": "HEARTBEAT", "msg_id": "h", "payload": {"x": ""}})
        emoji = frame.replace('"x": ""', '"x": "' + "\U0001f600" * 300 + '"')
        assert len(emoji) < 1_000 < len(emoji.encode("utf-8"))
        await c.send_raw(emoji)
        with trio.fail_after(5):
            assert await c.until_closed() == 1009


async def test_a_fragmented_message_is_counted_in_bytes_too(start_server):
    server = await start_server(agent_set(), max_message_bytes=1_000)
    async with connect(server, "socket") as c:
        ws = c.ws._wsproto
        from wsproto.events import Message as WsMessage

        parts = ['{"msg_type": "HEARTBEAT", "msg_id": "h", "payload": {"x": "']
        parts += ["\U0001f600" * 100] * 3 + ['"}}']
        data = b"".join(
            ws.send(WsMessage(data=part, message_finished=i == len(parts) - 1))
            for i, part in enumerate(parts)
        )
        await c.stream.send_all(data)
        with trio.fail_after(5):
            assert await c.until_closed() == 1009


# --------------------------------------------------------------------------- strict numbers


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("timeout_s", "5"),
        ("timeout_s", True),
        ("ts", True),
        ("ts", "1732540000000"),
        ("options", {"words": 10**400}),
        ("options", {"words": -(2**63) - 1}),
        ("options", {"nested": [{"deep": 2**63}]}),
        ("options", {"x": "1e400"}),  # replaced by the bare number below
        ("options", {"many": list(range(MAX_OPTION_VALUES))}),
        ("options", {"text": "x" * (MAX_OPTION_STRING_BYTES + 1)}),
        ("options", {"x" * (MAX_OPTION_STRING_BYTES + 1): 1}),
    ],
)
async def test_numbers_and_options_are_checked_when_the_frame_is_read(start_server, where, value):
    server = await start_server(agent_set())
    async with connect(server, "socket") as c:
        frame: dict[str, object] = {
            "msg_type": "REQUEST",
            "msg_id": "q1",
            "request_id": "r1",
            "payload": {"input": "hi", "agent": "lorem", "options": {"words_per_s": 0}},
        }
        if where == "ts":
            frame["ts"] = value
        elif where == "options":
            frame["payload"]["options"] = value  # type: ignore[index]
        else:
            frame["payload"][where] = value  # type: ignore[index]
        text = json.dumps(frame).replace('"1e400"', "1e400")
        error = await error_for(c, text)
        assert error["payload"]["code"] == "INVALID_MESSAGE"
        assert (error["ref"], error["request_id"]) == ("q1", "r1")
        assert where in error["payload"]["message"]
        assert len(json.dumps(error)) < 1_000


async def test_options_within_the_bounds_still_run(start_server):
    server = await start_server(agent_set())
    async with connect(server, "socket") as c:
        options = {
            "words": 3,
            "words_per_s": 0,
            "big": 2**63 - 1,
            "small": -(2**63),
            "float": 1.5e308,
            "list": list(range(MAX_OPTION_VALUES - 8)),
            "text": "é" * (MAX_OPTION_STRING_BYTES // 2 - 64),
        }
        await c.request("r1", **options)
        done = (await c.until_done("r1"))[-1]
        assert (done["payload"]["status"], done["payload"]["frames"]) == ("completed", 3)


def test_a_number_where_the_protocol_says_number_is_still_a_number():
    frame = {
        "msg_type": "REQUEST",
        "request_id": "r",
        "ts": 1732540000000,
        "payload": {"input": "", "timeout_s": 5},
    }
    message = parse_client_message(json.dumps(frame))
    assert message.ts == 1732540000000
    assert message.payload.timeout_s == 5.0  # type: ignore[union-attr]


# --------------------------------------------------------------------------- handshakes


def handshake_bytes(port: int, keys: list[str]) -> bytes:
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        *(f"Sec-WebSocket-Key: {key}" for key in keys),
        "Sec-WebSocket-Version: 13",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_handshake(port: int, keys: list[str]) -> Response:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(5):
        return await read_response(stream, port, keys)


async def read_response(stream: trio.SocketStream, port: int, keys: list[str]) -> Response:
    async with stream:
        await stream.send_all(handshake_bytes(port, keys))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            assert chunk, f"connection closed mid-response: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return Response(int(head.split(b" ", 2)[1]), head, body)


@pytest.mark.parametrize(
    "keys",
    [
        ["abc"],
        ["dGhlIHNhbXBsZSBub25jZQ"],  # no padding
        ["dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=="],
        ["dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ=="],
        ["dGhlIHNhbXBsZSBub25jZSE="],  # 17 bytes
        ["!!!!!!!!!!!!!!!!!!!!!!=="],
        [""],
    ],
    ids=["short", "unpadded", "two-headers", "two-in-one", "17-bytes", "not-base64", "empty"],
)
async def test_a_malformed_websocket_key_gets_400(start_server, keys):
    server = await start_server(agent_set())
    response = await send_handshake(server.port, keys)
    assert response.status == 400
    assert b"Sec-WebSocket-Key" in response.body


async def test_a_well_formed_websocket_key_is_accepted(start_server):
    server = await start_server(agent_set())
    response = await send_handshake(server.port, ["dGhlIHNhbXBsZSBub25jZQ=="])
    assert response.status == 101


def test_the_python_client_refuses_a_long_reason_before_it_cuts_anything():
    from trio_agent.client.state import ClientState

    state = ClientState()
    request, _ = state.request("hi")
    with pytest.raises(ValueError, match="reason"):
        state.interrupt(request.request_id, "x" * (MAX_REASON_CHARS + 1))
    assert request.done is None
    assert not state.interrupts
    state.interrupt(request.request_id, "é" * MAX_REASON_CHARS)
    assert request.done is not None
