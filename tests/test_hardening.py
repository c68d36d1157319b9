"""Hostile and broken clients: every refusal and every limit, end to end.

Refusals at the handshake (401, 403, 400, 503) run over a real socket and look at
the raw response; limits on a live session (rate, lanes, write progress) run over
memory streams with a MockClock, so time is exact and nothing sleeps.
"""

from __future__ import annotations

import contextlib
import json
import socket

import pytest
import trio
import trio.testing
from handshakes import RawClient, raw_handshake, request_bytes
from loguru import logger
from testing_agents import endless
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url
from wsproto.events import CloseConnection

from trio_agent import AgentError, AgentRequest, ResponseStream
from trio_agent import agents as builtin
from trio_agent.testing.wire import WireClient, connect, only

TOKEN = "s3cret-T0ken"


def agent_set(**extra):
    agents = {"lorem": builtin.lorem, "echo": builtin.echo, "endless": endless()}
    agents.update(extra)
    return agents


def messages(records, text):
    return [r for r in records if r["message"] == text]


# --------------------------------------------------------------------------- auth (401)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/ws", [("Authorization", f"Bearer {TOKEN}")]),
        (f"/ws?token={TOKEN}", []),
        ("/ws", [("Sec-WebSocket-Protocol", f"trio-agent.v1, trio-agent.token.{TOKEN}")]),
    ],
    ids=["bearer", "query", "subprotocol"],
)
async def test_the_right_token_opens_a_session_and_is_never_echoed(start_server, target, headers):
    server = await start_server(agent_set(), token=TOKEN)
    response = await raw_handshake(server.port, target, headers)
    assert response.status == 101
    assert TOKEN.encode() not in response.head
    if "Sec-WebSocket-Protocol" in dict(headers):
        # The protocol is selected, never the token.
        assert response.header("Sec-WebSocket-Protocol") == "trio-agent.v1"


async def test_a_browser_style_client_offers_the_token_as_a_subprotocol(start_server):
    server = await start_server(agent_set(), token=TOKEN)
    async with open_websocket_url(
        f"ws://127.0.0.1:{server.port}/ws",
        subprotocols=["trio-agent.v1", f"trio-agent.token.{TOKEN}"],
    ) as ws:
        assert ws.subprotocol == "trio-agent.v1"
        client = await WireClient(ws).start()
        await client.request("r1", agent="lorem", words=3, words_per_s=0)
        assert (await client.until_done("r1"))[-1]["payload"]["frames"] == 3


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/ws", []),
        ("/ws", [("Authorization", "Bearer wrong")]),
        ("/ws?token=wrong", []),
        ("/ws", [("Sec-WebSocket-Protocol", "trio-agent.v1, trio-agent.token.wrong")]),
        (f"/ws?token={TOKEN}", [("Authorization", "Bearer wrong")]),
    ],
)
async def test_a_missing_or_wrong_token_is_401_and_no_session_exists(start_server, target, headers):
    server = await start_server(agent_set(), token=TOKEN)
    response = await raw_handshake(server.port, target, headers)
    assert response.status == 401
    assert response.header("WWW-Authenticate") == 'Bearer realm="trio-agent"'
    assert b"token" in response.body
    assert server.sessions_total == 0
    await server.wait_idle()
    assert server.stats()["sessions"] == 0


async def test_401_through_a_real_client(start_server):
    server = await start_server(agent_set(), token=TOKEN)
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ws"):
            pass  # pragma: no cover
    assert rejected.value.status_code == 401


async def test_refused_handshakes_are_counted_by_status(start_server):
    server = await start_server(agent_set(), token=TOKEN, max_sessions=1)

    def refused(code: str) -> float | None:
        return server.metrics.registry.get_sample_value(
            "trio_agent_handshakes_refused_total", {"code": code}
        )

    await raw_handshake(server.port)
    await raw_handshake(server.port, headers=[("Origin", "http://evil.example")])
    await raw_handshake(server.port, headers=[("Origin", "http://evil.example")])
    async with connect(server, "socket", target=f"/ws?token={TOKEN}"):
        await raw_handshake(server.port, f"/ws?token={TOKEN}")
    assert (refused("401"), refused("403"), refused("503")) == (1, 2, 1)


# --------------------------------------------------------------------------- origin (403)


async def test_a_foreign_browser_origin_is_403_before_the_token_is_looked_at(start_server):
    server = await start_server(agent_set(), token=TOKEN)
    for auth in ("Bearer wrong", f"Bearer {TOKEN}"):
        response = await raw_handshake(
            server.port, headers=[("Origin", "http://evil.example"), ("Authorization", auth)]
        )
        assert response.status == 403
    assert server.sessions_total == 0


async def test_same_origin_and_listed_origins_are_let_in(start_server):
    server = await start_server(agent_set())
    same = await raw_handshake(server.port, headers=[("Origin", f"http://127.0.0.1:{server.port}")])
    assert same.status == 101
    listed = await start_server(agent_set(), allow_origin="https://app.example")
    ok = await raw_handshake(listed.port, headers=[("Origin", "https://app.example")])
    assert ok.status == 101
    other = await raw_handshake(listed.port, headers=[("Origin", "https://other.example")])
    assert other.status == 403
    star = await start_server(agent_set(), allow_origin="*")
    anyone = await raw_handshake(star.port, headers=[("Origin", "https://other.example")])
    assert anyone.status == 101


async def test_a_token_subprotocol_alone_is_400(start_server):
    server = await start_server(agent_set(), token=TOKEN)
    response = await raw_handshake(
        server.port, headers=[("Sec-WebSocket-Protocol", f"trio-agent.token.{TOKEN}")]
    )
    assert response.status == 400
    assert TOKEN.encode() not in response.head + response.body


# --------------------------------------------------------------------------- capacity (503)


async def test_max_sessions_refuses_the_next_handshake_with_503(start_server):
    server = await start_server(agent_set(), max_sessions=2)
    async with connect(server, "socket"), connect(server, "socket"):
        response = await raw_handshake(server.port)
        assert response.status == 503
        assert b"full" in response.body
        assert server.stats()["sessions"] == 2
    with trio.fail_after(5):
        await server.wait_idle()
    async with connect(server, "socket") as c:
        await c.heartbeat()
        await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")


async def test_a_draining_server_refuses_with_503(start_server):
    """The listener stops at once on shutdown, and a connection idle between requests
    is closed; a handshake already under way when the drain begins gets 503."""
    server = await start_server(agent_set())
    async with connect(server) as c:
        await c.request("r", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_stream, server_stream)
            head = request_bytes("localhost")
            await client_stream.send_all(head[:20])
            await trio.testing.wait_all_tasks_blocked()
            server.shutdown()
            await client_stream.send_all(head[20:])
            response = b""
            while b"\r\n\r\n" not in response:
                response += await client_stream.receive_some()
            assert response.startswith(b"HTTP/1.1 503 ")
        assert await c.until_closed() == 1001


# --------------------------------------------------------------------------- secrets


async def test_no_log_line_holds_a_token(start_server, log_records, caplog):
    caplog.set_level("DEBUG")  # trio-websocket's own (stdlib) logger too
    server = await start_server(agent_set(), token=TOKEN)
    wrong = "wr0ng-T0ken-value"
    attempts = [
        ("/ws", [("Authorization", f"Bearer {TOKEN}")]),
        (f"/ws?token={TOKEN}", []),
        ("/ws", [("Sec-WebSocket-Protocol", f"trio-agent.v1, trio-agent.token.{TOKEN}")]),
        ("/ws", [("Authorization", f"Bearer {wrong}")]),
        (f"/ws?token={wrong}", []),
        ("/ws", [("Sec-WebSocket-Protocol", f"trio-agent.v1, trio-agent.token.{wrong}")]),
        (f"/elsewhere?token={wrong}", []),
        (f"/ws?token={wrong}", [("Origin", "http://evil.example")]),
    ]
    for target, headers in attempts:
        await raw_handshake(server.port, target, headers)
    async with connect(server, "socket", headers=[(b"authorization", f"Bearer {TOKEN}".encode())]):
        pass
    await server.wait_idle()
    assert messages(log_records, "handshake refused")
    assert messages(log_records, "handshake accepted")
    text = "\n".join(
        f"{r['message']} {r['extra']} {r['exception']}" for r in log_records
    ) + "\n".join(caplog.messages)
    for secret in (TOKEN, wrong):
        assert secret not in text


# --------------------------------------------------------------------------- floods


async def test_frames_over_the_rate_get_rate_limited_then_the_flood_is_forgiven(
    start_server, autojump_clock
):
    server = await start_server(
        agent_set(), rate_limit_per_s=10, rate_limit_burst=4, rate_limit_close_after=3
    )
    async with connect(server) as c:
        ids = [await c.heartbeat() for _ in range(5)]
        # The fifth frame found the bucket empty: refused, not acted on.
        await c.recv_until(lambda f: f["msg_type"] == "ERROR")
        replies = only(c.received, "HEARTBEAT")
        assert [r["ref"] for r in replies] == ids[:4]
        error = only(c.received, "ERROR")[0]
        assert error["payload"]["code"] == "RATE_LIMITED"
        assert error["ref"] == ids[4]
        # An INTERRUPT is never refused for rate: it gets its ACK (guarantee 3).
        interrupt = await c.interrupt("r9")
        ack = (await c.recv_until(lambda f: f["msg_type"] == "INTERRUPT_ACK"))[-1]
        assert (ack["ref"], ack["request_id"]) == (interrupt, "r9")
        # Quiet long enough to earn the burst back: served again.
        await trio.sleep(1)
        await c.heartbeat()
        await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")
        c.assert_guarantees()


async def test_a_flood_past_the_hard_limit_closes_with_1008_after_a_bounded_number_of_errors(
    start_server, autojump_clock, log_records
):
    server = await start_server(
        agent_set(), rate_limit_per_s=10, rate_limit_burst=4, rate_limit_close_after=3
    )
    async with connect(server) as c:
        for _ in range(20):
            try:
                await c.heartbeat()
            except ConnectionClosed:
                break
        assert await c.until_closed() == 1008
        assert len(only(c.received, "HEARTBEAT")) == 4
        # At most close_after ERRORs (the last ones may still be queued when the
        # session closes: a session closed for a policy violation is not flushed).
        errors = only(c.received, "ERROR")
        assert 1 <= len(errors) <= 3
        assert {e["payload"]["code"] for e in errors} == {"RATE_LIMITED"}
        with trio.fail_after(5):
            await server.wait_idle()
    closed = messages(log_records, "session closed")[-1]["extra"]
    assert closed["code"] == 1008
    assert "rate limit" in closed["reason"]


async def test_a_client_that_floods_control_frames_without_reading_is_cut_off(
    start_server, autojump_clock, log_records
):
    """The priority lane is bounded: once it overflows the session ends. Its writer is
    stuck behind the client, so the 1008 close frame cannot be written within 1 s and
    the connection is aborted instead."""
    server = await start_server(agent_set(), priority_lane_capacity=4, rate_limit_per_s=0)
    async with connect(server, "memory", lockstep=True) as c:
        t0 = trio.current_time()
        for _ in range(40):
            try:
                await c.heartbeat()
            except ConnectionClosed:
                break
        with trio.fail_after(2):
            await server.wait_idle()
        assert trio.current_time() - t0 <= 1.5
        assert await c.until_closed() == 1006  # aborted: no close frame got through
    closed = messages(log_records, "session closed")[-1]["extra"]
    assert closed["code"] == 1008
    assert "does not read" in closed["reason"]


# --------------------------------------------------------------------------- slow readers


async def test_a_client_that_stops_reading_is_aborted_after_send_timeout_and_others_keep_going(
    start_server, autojump_clock, log_records
):
    server = await start_server(agent_set(), send_timeout_s=5, stream_lane_capacity=4)
    idle_tasks = server.stats()["tasks"]
    # A client that never reads: with lockstep streams, the server's first write
    # (the SESSION frame) already waits for it.
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    stalled = RawClient(client_stream)
    async with connect(server, "memory") as healthy, trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_stream)
        assert await stalled.handshake() == 101
        t0 = trio.current_time()
        await stalled.send(
            {
                "msg_type": "REQUEST",
                "request_id": "big",
                "payload": {"input": "", "options": {"words": 10**5, "words_per_s": 0}},
            }
        )
        await trio.testing.wait_all_tasks_blocked()
        # The stalled session's writer and agent wait; the healthy session is
        # served without waiting for anything: no (virtual) time passes.
        for _ in range(3):
            await healthy.heartbeat()
            await healthy.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")
        await healthy.request("r", agent="lorem", words=20, words_per_s=0)
        assert (await healthy.until_done("r"))[-1]["payload"]["frames"] == 20
        assert trio.current_time() == t0
        assert server.stats()["sessions"] == 2
    # The nursery ended when the stalled connection's serve_stream returned: after
    # send_timeout_s without progress it was aborted, and nothing of it is left.
    assert trio.current_time() - t0 == 5
    while await client_stream.receive_some():
        pass  # the stream ends: the server closed its side
    warning = messages(log_records, "client stopped reading; aborting the connection")
    assert warning[0]["extra"]["session_id"] not in (healthy.session_id, "-")
    healthy.assert_guarantees()
    await server.wait_idle()
    await trio.testing.wait_all_tasks_blocked()
    assert server.stats()["tasks"] == idle_tasks


async def test_a_stalled_socket_is_reset_not_closed(start_server):
    """Over real TCP: the client stops reading; the server gives up after
    send_timeout_s and resets the connection, so the kernel frees the unsent bytes."""
    # Resumption off: the reset connection's session ends with it.
    server = await start_server(agent_set(), send_timeout_s=0.3, resume_window_s=0)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    client = RawClient(stream)
    await client.handshake()
    await client.send(
        {
            "msg_type": "REQUEST",
            "request_id": "big",
            "payload": {
                "input": "x",
                "agent": "lorem",
                "options": {"words": 10**6, "words_per_s": 0},
            },
        }
    )
    with trio.fail_after(20):
        await server.wait_idle()

    async def read_everything() -> None:
        while await stream.receive_some(1 << 20):
            pass

    with pytest.raises(trio.BrokenResourceError) as broken:
        await read_everything()
    assert isinstance(broken.value.__cause__, ConnectionResetError)
    await stream.aclose()


# --------------------------------------------------------------------------- sizes


async def test_message_size_limit_is_exact(start_server):
    server = await start_server(agent_set(), max_message_bytes=100)
    async with connect(server) as c:
        frame = {"msg_type": "HEARTBEAT", "msg_id": ""}
        frame["msg_id"] = "x" * (100 - len(json.dumps(frame)))
        text = json.dumps(frame)
        assert len(text) == 100
        await c.send_raw(text)
        await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")
        await c.send_raw(text + " ")
        assert await c.until_closed() == 1009


async def test_input_size_limit_is_exact_and_the_session_stays_open(start_server):
    server = await start_server(agent_set(), max_input_bytes=6)
    async with connect(server) as c:
        await c.request("ok", agent="echo", input="ééé")  # 6 bytes
        assert (await c.until_done("ok"))[-1]["payload"]["status"] == "completed"
        await c.send(
            {
                "msg_type": "REQUEST",
                "msg_id": "m",
                "request_id": "big",
                "payload": {"input": "ééé!"},
            }
        )
        error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
        assert error["payload"]["code"] == "MESSAGE_TOO_LARGE"
        c.checker.received({"msg_type": "ERROR", "request_id": "big"})
        await c.heartbeat()
        await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")


# --------------------------------------------------------------------------- faulty agents


def hangs_then_streams(clock: trio.testing.MockClock, hang_s: float):
    """Blocks the thread (no checkpoint) for ``hang_s``, then tries to go on."""

    async def agent(request: AgentRequest, stream: ResponseStream) -> None:
        await stream.send("before")
        clock.jump(hang_s)  # a long computation: time passes, nothing else runs
        await stream.send("after")
        await trio.sleep_forever()

    return agent


async def test_an_agent_that_hangs_without_checkpoint_ends_its_own_request_with_a_logged_reason(
    start_server, autojump_clock, log_records
):
    server = await start_server(
        agent_set(hang=hangs_then_streams(autojump_clock, 3.0)), slow_step_warn_s=0.5
    )
    async with connect(server) as c:
        await c.request("h", agent="hang", timeout_s=1)
        done = (await c.until_done("h"))[-1]["payload"]
        # Its deadline passed during the hang; the next checkpoint delivered it.
        assert done["status"] == "timeout"
        assert done["frames"] == 1
        warning = messages(
            log_records, "a task ran without a checkpoint, freezing every session meanwhile"
        )[0]["extra"]
        assert warning["blocked_s"] >= 3
        assert warning["request_id"] == "h"
        assert warning["session_id"] == c.session_id
        await c.request("next", agent="lorem", words=2, words_per_s=0)
        assert (await c.until_done("next"))[-1]["payload"]["status"] == "completed"
        c.assert_guarantees()


async def test_an_interrupt_read_during_a_hang_is_served_at_the_next_checkpoint(
    start_server, autojump_clock
):
    server = await start_server(agent_set(hang=hangs_then_streams(autojump_clock, 3.0)))
    async with connect(server) as c:
        await c.request("h", agent="hang")
        await c.interrupt("h")  # queued while the agent blocks the thread
        frames = await c.until_done("h")
        assert frames[-1]["payload"]["status"] == "interrupted"
        c.assert_guarantees()


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


async def bad_delta_type(request, stream) -> None:
    await stream.send(b"bytes")


async def lone_surrogate(request, stream) -> None:
    await stream.send("ok")
    await stream.send("\ud800")


async def carries_on_after_a_refused_delta(request, stream) -> None:
    for delta in ("a", "\ud800", 42, "b"):
        with contextlib.suppress(TypeError, ValueError):
            await stream.send(delta)


async def returns_text(request, stream) -> str:
    return "the whole answer"


async def unprintable_error(request, stream) -> None:
    raise Unprintable


async def garbage_agent_error(request, stream) -> None:
    raise AgentError(None, "bad \udcff text")  # type: ignore[arg-type]


def not_async(request, stream) -> None:
    return None


@pytest.mark.parametrize(
    ("agent", "status", "frames", "error"),
    [
        (bad_delta_type, "failed", 0, "TypeError"),
        (lone_surrogate, "failed", 1, "PydanticSerializationError"),
        (carries_on_after_a_refused_delta, "completed", 2, None),
        (returns_text, "failed", 0, "returned a str"),
        (unprintable_error, "failed", 0, "Unprintable"),
        (garbage_agent_error, "failed", 0, "bad \\udcff text"),
        (not_async, "failed", 0, "TypeError"),
    ],
)
async def test_an_agent_that_returns_or_sends_garbage_ends_only_its_request(
    start_server, agent, status, frames, error, log_records
):
    server = await start_server(agent_set(bad=agent))
    async with connect(server) as c:
        await c.request("bad", agent="bad")
        done = (await c.until_done("bad"))[-1]["payload"]
        assert done["status"] == status
        assert done["frames"] == frames
        if error is not None:
            assert error in done["error"]["message"]
        await c.request("next", agent="lorem", words=2, words_per_s=0)
        assert (await c.until_done("next"))[-1]["payload"]["status"] == "completed"
        c.assert_guarantees()
    if status == "failed":
        ended = [
            r for r in messages(log_records, "request ended") if r["extra"]["request_id"] == "bad"
        ]
        assert ended[0]["extra"]["reason"]


# --------------------------------------------------------------------------- vanishing clients


async def vanish_before_the_request(client: RawClient) -> None:
    pass


async def vanish_mid_request(client: RawClient) -> None:
    await client.stream.send_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgr")


async def send_garbage_instead_of_http(client: RawClient) -> None:
    await client.stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")


async def vanish_mid_frame(client: RawClient) -> None:
    assert await client.handshake() == 101
    frame = client.frame({"msg_type": "HEARTBEAT", "msg_id": "h" * 300})
    await client.stream.send_all(frame[: len(frame) // 2])


async def vanish_mid_frame_header(client: RawClient) -> None:
    assert await client.handshake() == 101
    await client.stream.send_all(client.frame({"msg_type": "HEARTBEAT", "msg_id": "h"})[:1])


async def vanish_after_sending_close(client: RawClient) -> None:
    assert await client.handshake() == 101
    await client.stream.send_all(client.ws.send(CloseConnection(code=1000)))


async def vanish_while_the_server_closes(client: RawClient) -> None:
    """The server starts the close handshake (idle timeout); the client leaves
    instead of answering it."""
    assert await client.handshake() == 101
    while True:
        client.ws.receive_data(await client.stream.receive_some())
        if any(isinstance(e, CloseConnection) for e in client.ws.events()):
            return


@pytest.mark.parametrize(
    "behaviour",
    [
        vanish_before_the_request,
        vanish_mid_request,
        send_garbage_instead_of_http,
        vanish_mid_frame,
        vanish_mid_frame_header,
        vanish_after_sending_close,
        vanish_while_the_server_closes,
    ],
)
async def test_a_client_that_vanishes_at_any_point_leaves_no_task(
    start_server, autojump_clock, behaviour
):
    """serve_stream owns every task of its connection, so its return proves none is
    left; and it returns at once (no virtual time passes), not when a handshake
    timeout or a close timeout fires."""
    # Resumption off: a vanished client's session ends with its connection.
    server = await start_server(
        agent_set(), idle_timeout_s=30, handshake_timeout_s=10, resume_window_s=0
    )
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = RawClient(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_stream)
        await behaviour(client)
        t0 = trio.current_time()
        await client_stream.aclose()
    assert trio.current_time() - t0 == 0
    assert server.stats()["connections"] == 0
    assert server.stats()["sessions"] == 0


# --------------------------------------------------------------------------- stats


async def test_stats_are_logged_at_debug_every_interval(start_server):
    """The DEBUG "server stats" line carries what stats() returns, live tasks included."""
    busy = trio.Event()
    lines: list[dict] = []

    def sink(message) -> None:
        record = message.record
        if record["message"] == "server stats":
            lines.append(record)
            if record["extra"]["requests_running"] == 1:
                busy.set()

    handler = logger.add(sink, level="DEBUG")
    try:
        server = await start_server(agent_set(), stats_interval_s=0.01)
        async with connect(server, "socket") as c:
            await c.request("r", agent="endless")
            with trio.fail_after(5):
                await busy.wait()
    finally:
        logger.remove(handler)
    idle, latest = lines[0], lines[-1]
    assert latest["level"].name == "DEBUG"
    assert latest["extra"]["sessions"] == 1
    # A session with a running request: its connection, reader, writer and
    # request tasks are all counted.
    assert latest["extra"]["tasks"] >= idle["extra"]["tasks"] + 4
