"""The server's WebSocket read in the caller's task (``trio_agent/server/inbound.py``).

It leans on trio-websocket's internals, so the first tests fail loudly when those
change (the version, the attributes and handlers it calls, and above all what they
do: the same client bytes must give the same messages, the same close code and
reason, and the same bytes back as trio-websocket's own reader task). Then what it
is for: no task reads but the caller, a message already received costs no schedule
point, and a close reads the client's answer itself.
"""

from __future__ import annotations

import inspect

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from trio_agent.server.inbound import MAX_MESSAGES_WITHOUT_YIELD, DirectReadWebSocket

MAX_MESSAGE = 64


# ------------------------------------------------------------------ trio-websocket's internals


def test_trio_websocket_is_the_series_the_direct_reader_was_written_against():
    assert trio_websocket.__version__.startswith("0.12."), (
        "server/inbound.py calls trio-websocket's internals: check them against this "
        f"version ({trio_websocket.__version__}) and update the pin in pyproject.toml"
    )


def test_the_internals_the_direct_reader_uses_exist():
    ws = WebSocketConnection(
        trio.testing.memory_stream_pair()[0], WSConnection(ConnectionType.SERVER)
    )
    for name in (
        "_wsproto",
        "_stream",
        "_receive_buffer_size",
        "_max_message_size",
        "_message_size",
        "_message_parts",
        "_reader_running",
        "_close_reason",
        "_close_handshake",
        "_connection_proposal",
    ):
        assert hasattr(ws, name), name
    for name in (
        "_send",
        "_abort_web_socket",
        "_close_stream",
        "_handle_close_connection_event",
        "_handle_ping_event",
        "_handle_pong_event",
        "_reader_task",
    ):
        assert inspect.iscoroutinefunction(getattr(WebSocketConnection, name)), name
    # aclose() runs _aclose, which DirectReadWebSocket replaces to read the answer.
    assert "self._aclose(" in inspect.getsource(WebSocketConnection.aclose)
    # wrap_server_stream starts the reader task the direct reader does without.
    assert "_reader_task" in inspect.getsource(wrap_server_stream)


# ------------------------------------------------------------------ a scripted client


def client_handshake() -> tuple[WSConnection, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    return client, client.send(Request(host="localhost", target="/ws"))


def frames(client: WSConnection, *events: object) -> bytes:
    return b"".join(client.send(event) for event in events)  # type: ignore[arg-type]


async def serve_direct(stream: trio.abc.Stream) -> WebSocketConnection:
    ws = DirectReadWebSocket(stream, max_message_size=MAX_MESSAGE)
    request = await ws.receive_request()
    assert request is not None
    return await request.accept()


async def exchange(
    build: object, *, direct: bool, end_with_eof: bool = False
) -> tuple[list[str | bytes], tuple[int, str | None] | None, bytes]:
    """Serve one connection, direct or through trio-websocket's reader task, to a
    client that sends the handshake, then ``build(client)``'s bytes in one write.

    Returns the messages the server read, the close reason it ended with, and
    every byte it sent after its handshake response."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client, hello = client_handshake()
    messages: list[str | bytes] = []
    closed: tuple[int, str | None] | None = None
    async with trio.open_nursery() as nursery:
        await client_stream.send_all(hello)
        if direct:
            ws = await serve_direct(server_stream)
        else:
            request = await wrap_server_stream(nursery, server_stream, max_message_size=MAX_MESSAGE)
            ws = await request.accept()
        client.receive_data(await client_stream.receive_some())
        assert isinstance(next(client.events()), AcceptConnection)
        await client_stream.send_all(build(client))  # type: ignore[operator]
        if end_with_eof:
            await client_stream.send_stream.aclose()
        try:
            while True:
                messages.append(await ws.get_message())
        except ConnectionClosed as exc:
            if exc.reason is not None:
                closed = (exc.reason.code, exc.reason.reason)
        nursery.cancel_scope.cancel()
    await server_stream.aclose()
    sent = b""
    while chunk := await client_stream.receive_some():
        sent += chunk
    return messages, closed, sent


SCRIPTS = {
    "two messages, then close": (
        lambda c: frames(
            c, TextMessage(data="one"), TextMessage(data="two"), CloseConnection(1000, "bye")
        ),
        False,
    ),
    "fragments, a ping between, binary, close": (
        lambda c: frames(
            c,
            TextMessage(data="fra", message_finished=False),
            Ping(payload=b"p1"),
            TextMessage(data="gmented", message_finished=True),
            BytesMessage(data=b"\x00\x01"),
            CloseConnection(4000, "done"),
        ),
        False,
    ),
    "a message over the limit": (
        lambda c: frames(c, TextMessage(data="ok"), TextMessage(data="x" * (MAX_MESSAGE + 1))),
        False,
    ),
    "a message over the limit in fragments": (
        lambda c: frames(
            c,
            TextMessage(data="x" * 40, message_finished=False),
            TextMessage(data="x" * 40, message_finished=True),
        ),
        False,
    ),
    "the connection ends without a close frame": (
        lambda c: frames(c, TextMessage(data="last")),
        True,
    ),
    "a frame with reserved bits set": (
        lambda c: frames(c, TextMessage(data="ok")) + b"\xf1\x80\x00\x00\x00\x00",
        False,
    ),
    "text that is not UTF-8": (
        lambda c: b"\x81\x82\x00\x00\x00\x00\xff\xfe",
        False,
    ),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
async def test_the_direct_reader_answers_as_trio_websockets_reader_task(script):
    build, eof = SCRIPTS[script]
    reference = await exchange(build, direct=False, end_with_eof=eof)
    direct = await exchange(build, direct=True, end_with_eof=eof)
    assert direct == reference
    if script == "a message over the limit":
        assert direct[1] == (1009, f"Exceeded maximum message size: {MAX_MESSAGE} bytes")
    if script == "a frame with reserved bits set":
        assert direct[1] is not None
        assert direct[1][0] == 1002
    if script == "fragments, a ping between, binary, close":
        assert direct[0] == ["fragmented", b"\x00\x01"]


async def test_a_refused_handshake_is_answered_and_ends_at_once():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    ws = DirectReadWebSocket(server_stream, max_message_size=MAX_MESSAGE)
    await client_stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")  # no upgrade headers
    assert await ws.receive_request() is None
    answer = await client_stream.receive_some()
    assert answer.startswith(b"HTTP/1.1 400")


async def test_a_client_that_leaves_during_the_handshake_ends_it():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    ws = DirectReadWebSocket(server_stream, max_message_size=MAX_MESSAGE)
    await client_stream.send_stream.aclose()
    assert await ws.receive_request() is None


# ------------------------------------------------------------------ what it is for


async def open_pair() -> tuple[WSConnection, trio.abc.Stream, WebSocketConnection]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client, hello = client_handshake()
    await client_stream.send_all(hello)
    ws = await serve_direct(server_stream)
    client.receive_data(await client_stream.receive_some())
    assert isinstance(next(client.events()), AcceptConnection)
    return client, client_stream, ws


class StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_messages_are_read_without_any_other_task_and_without_a_schedule_point():
    # No nursery at all: nothing but this task reads the connection.
    client, client_stream, ws = await open_pair()
    await client_stream.send_all(frames(client, *(TextMessage(data=f"m{i}") for i in range(3))))
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        assert await ws.get_message() == "m0"  # read from the stream: one schedule point
        steps = counter.steps
        # Already received: returned in this task's step, no pass of the scheduler.
        assert await ws.get_message() == "m1"
        assert await ws.get_message() == "m2"
        assert counter.steps == steps
    finally:
        trio.lowlevel.remove_instrument(counter)


async def test_a_burst_of_received_messages_yields_now_and_then():
    client, client_stream, ws = await open_pair()
    count = 3 * MAX_MESSAGES_WITHOUT_YIELD
    await client_stream.send_all(frames(client, *(TextMessage(data="m") for _ in range(count))))
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        for _ in range(count):
            await ws.get_message()
    finally:
        trio.lowlevel.remove_instrument(counter)
    # One read, then a yield every MAX_MESSAGES_WITHOUT_YIELD messages: bounded, not zero.
    assert 2 <= counter.steps <= 2 + count // MAX_MESSAGES_WITHOUT_YIELD


async def test_a_ping_is_answered_by_the_reading_task():
    client, client_stream, ws = await open_pair()
    await client_stream.send_all(frames(client, Ping(payload=b"hi"), TextMessage(data="after")))
    assert await ws.get_message() == "after"
    client.receive_data(await client_stream.receive_some())
    assert [type(e).__name__ for e in client.events()] == ["Pong"]


async def test_two_tasks_reading_at_once_is_refused():
    _client, _stream, ws = await open_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.get_message)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await ws.get_message()
        nursery.cancel_scope.cancel()


async def test_aclose_reads_the_clients_close_frame_itself():
    client, client_stream, ws = await open_pair()

    async def answering_client() -> None:
        # A message still in flight, then the answer to the server's close frame.
        late = frames(client, TextMessage(data="late"))
        while True:
            data = await client_stream.receive_some()
            if not data:
                return
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, CloseConnection):
                    await client_stream.send_all(late + client.send(event.response()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answering_client)
        with trio.fail_after(5):  # (a hang fails the test)
            await ws.aclose(code=4001, reason="resumed elsewhere")
    assert client.state is ConnectionState.CLOSED
    assert ws.closed is not None
    assert ws.closed.code == 4001
    with pytest.raises(ConnectionClosed):
        await ws.get_message()


async def test_aclose_to_a_client_that_never_answers_is_bounded_by_the_caller(autojump_clock):
    _client, client_stream, ws = await open_pair()
    with trio.move_on_after(1.0) as waited:
        await ws.aclose(code=1012, reason="server restarting")
    assert waited.cancelled_caught
    # The stream is closed anyway: the client sees the close frame, then the end.
    sent = b""
    while chunk := await client_stream.receive_some():
        sent += chunk
    assert sent.startswith(b"\x88")


# ------------------------------------------------------------------ in the server, over TCP


class ServerSteps(trio.abc.Instrument):
    """Counts the task steps of the server's tasks (not the client's, in the same run)."""

    def __init__(self, server_nursery: trio.Nursery) -> None:
        self.server_nursery = server_nursery
        self.steps = 0
        self.names: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        nursery = task.parent_nursery
        while nursery is not None and nursery is not self.server_nursery:
            nursery = nursery.parent_task.parent_nursery
        if nursery is not None:
            self.steps += 1
            self.names[task.name] = self.names.get(task.name, 0) + 1


async def test_a_heartbeat_costs_the_server_no_step_of_a_reader_task(start_server):
    from trio_agent.testing.wire import open_wire

    server = await start_server()
    idle_tasks = server.stats()["tasks"]
    async with open_wire(server, "socket") as wire:
        # The connection's task (the session's reader) and its writer, the session's
        # task: no reader task of trio-websocket's.
        assert server.stats()["tasks"] == idle_tasks + 3
        await wire.heartbeat()
        await wire.receive_message()
        await trio.testing.wait_all_tasks_blocked()
        assert server._nursery is not None
        counter = ServerSteps(server._nursery)
        trio.lowlevel.add_instrument(counter)
        try:
            rounds = 50
            for _ in range(rounds):
                await wire.heartbeat()
                reply = await wire.receive_message()
                assert reply["msg_type"] == "HEARTBEAT"
                await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(counter)
    # The reader's step reads, handles and queues the reply; the writer's steps
    # write it (two, see docs/performance.md). trio-websocket's reader task, handing
    # each message over a channel, made it four.
    assert counter.steps / rounds <= 3.0, counter.names


async def test_a_reader_cancelled_while_it_yields_loses_no_message():
    client, client_stream, ws = await open_pair()
    count = MAX_MESSAGES_WITHOUT_YIELD + 2
    await client_stream.send_all(frames(client, *(TextMessage(data=f"m{i}") for i in range(count))))
    got = [await ws.get_message() for _ in range(MAX_MESSAGES_WITHOUT_YIELD)]
    with trio.CancelScope() as scope:
        scope.cancel()
        await ws.get_message()  # the yield: cancelled before it took a message
    got += [await ws.get_message() for _ in range(2)]
    assert got == [f"m{i}" for i in range(count)]
