"""The Python client resumes against the real server, over real sockets.

Each test puts a small TCP relay between the client and the server, so that it can
drop the connection mid-reply the way a network does (a TCP reset on both sides, no
close frame), hold back what the server writes, or keep the client from reconnecting
for a while. The client runs in strict mode: a broken guarantee would end it with
ProtocolViolation, so every test also checks that the two sides agree on the v1.2
resume protocol (docs/protocol.md, "v1.2: resuming a session").
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from trio_agent import AgentRequest, ResponseStream
from trio_agent import agents as builtin
from trio_agent.client import (
    Chunk,
    ConnectionEvent,
    ConnectionLost,
    InterruptHandle,
    ServerError,
    open_agent_client,
)
from trio_agent.server.replay import ReplayBuffer
from trio_agent.testing import AgentCheckFailed, check_agent

#: SO_LINGER on, 0 s: closing the socket sends a RST instead of a FIN.
RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class Relay:
    """A TCP relay between the client and the server that a test can break.

    ``open_stream`` (given to ``open_agent_client``) connects through it. ``drop()``
    resets both sockets of the current connection; ``hold_replies()`` stops passing
    the server's bytes to the client (``held`` is set when some arrive);
    ``block_reconnects()`` makes the next ``open_stream`` wait for
    ``allow_reconnects()``.
    """

    def __init__(self, nursery: trio.Nursery, listener: trio.SocketListener, server_port: int):
        self._nursery = nursery
        self._listener = listener
        self._server_port = server_port
        self._sockets: list[trio.SocketStream] = []
        self._holding = self._losing_requests = False
        self.held = trio.Event()
        self._may_connect = trio.Event()
        self._may_connect.set()
        self.connections = 0

    async def open_stream(self) -> trio.SocketStream:
        await self._may_connect.wait()
        port = self._listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        accepted = await self._listener.accept()
        upstream = await trio.open_tcp_stream("127.0.0.1", self._server_port)
        assert isinstance(accepted, trio.SocketStream)
        self._sockets = [accepted, upstream]
        self._holding = self._losing_requests = False
        self.held = trio.Event()
        self.connections += 1
        self._nursery.start_soon(self._pump, accepted, upstream, False)
        self._nursery.start_soon(self._pump, upstream, accepted, True)
        return client

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, replies: bool
    ) -> None:
        try:
            while data := await source.receive_some():
                if replies and self._holding:
                    self.held.set()
                    continue  # written by the server, never delivered
                if not replies and self._losing_requests:
                    continue  # written by the client, never delivered
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.CancelScope(shield=True):
            await sink.aclose()

    def lose_requests(self) -> None:
        """Stop passing the client's bytes to the server (until the next connection)."""
        self._losing_requests = True

    def hold_replies(self) -> None:
        self._holding = True

    def block_reconnects(self) -> None:
        self._may_connect = trio.Event()

    def allow_reconnects(self) -> None:
        self._may_connect.set()

    async def drop(self, how: str = "reset") -> None:
        """End the current connection on both sides without a close frame: with a TCP
        reset (``"reset"``), or a plain FIN (``"fin"``)."""
        for sock in self._sockets if how == "reset" else ():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        for sock in self._sockets:
            await trio.aclose_forcefully(sock)


@pytest.fixture
async def relay_to(nursery: trio.Nursery) -> AsyncIterator[Any]:
    listeners: list[trio.SocketListener] = []

    async def make(server: Any) -> Relay:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listeners.append(listener)
        return Relay(nursery, listener, server.port)

    yield make
    for listener in listeners:
        await listener.aclose()


def client_of(server: Any, relay: Relay, **options: Any) -> Any:
    options.setdefault("heartbeat_s", None)
    options.setdefault("strict", True)
    return open_agent_client(
        server.url,
        open_stream=relay.open_stream,
        resume_backoff_s=0.01,
        resume_backoff_max_s=0.05,
        **options,
    )


async def two_words_then_wait(request: AgentRequest, stream: ResponseStream) -> None:
    await stream.send(" one")
    await stream.send(" two")
    await trio.sleep_forever()


async def next_event(client: Any) -> ConnectionEvent:
    with trio.fail_after(10):
        event: ConnectionEvent = await client.events.receive()
    return event


async def take(response: Any, count: int) -> list[Chunk]:
    with trio.fail_after(10):
        return [await response.__anext__() for _ in range(count)]


def check_seqs(chunks: list[Chunk]) -> None:
    assert [c.seq for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("how", ["reset", "fin"])
async def test_a_reply_dropped_mid_stream_goes_on_with_every_chunk_once(
    start_server, relay_to, how
):
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    words = 60
    async with client_of(server, relay) as client:
        response = await client.request(
            "q", agent="lorem", options={"words": words, "words_per_s": 200}
        )
        got = await take(response, 5)
        await relay.drop(how)
        with trio.fail_after(10):
            got += [chunk async for chunk in response]
            done = await response.done()
        assert [e.kind for e in [await next_event(client), await next_event(client)]] == [
            "reconnecting",
            "resumed",
        ]
        check_seqs(got)
        assert len(got) == words
        assert response.text == "".join(c.delta for c in got)
        assert (done.status, done.frames) == ("completed", words)
        assert relay.connections == 2
        assert client.violations == []


async def test_the_session_id_stays_the_old_one_after_a_resume(start_server, relay_to):
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    async with client_of(server, relay) as client:
        before = client.session_id
        response = await client.request(
            "q", agent="lorem", options={"words": 30, "words_per_s": 200}
        )
        await take(response, 2)
        await relay.drop()
        assert (await next_event(client)).kind == "reconnecting"
        assert (await next_event(client)).kind == "resumed"
        assert client.session_id == before
        with trio.fail_after(10):
            assert (await response.done()).frames == 30
        # A request made after the resume runs in the same session.
        again = await client.request("q", agent="lorem", options={"words": 3})
        with trio.fail_after(10):
            assert (await again.done()).status == "completed"
        assert client.violations == []


async def test_an_interrupt_right_after_the_resume_cuts_the_reply(start_server, relay_to):
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    async with client_of(server, relay) as client:
        response = await client.request(
            "q", agent="lorem", options={"words": 10_000, "words_per_s": 100}
        )
        got = await take(response, 2)
        await relay.drop()
        assert (await next_event(client)).kind == "reconnecting"
        assert (await next_event(client)).kind == "resumed"
        handle = await client.interrupt(response.request_id)
        with trio.fail_after(10):
            ack = await handle.acknowledged()
            got += [chunk async for chunk in response]
            done = await response.wait_server_done()
        assert ack.interrupted == (response.request_id,)
        check_seqs(got)
        assert (done.status, done.interrupted) == ("interrupted", True)
        # Every frame the server wrote reached the client once: consumed or dropped as stale.
        assert done.frames == len(got) + response.stale_dropped
        assert client.violations == []


async def test_an_interrupt_made_while_disconnected_is_sent_on_resume(start_server, relay_to):
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    async with client_of(server, relay) as client:
        response = await client.request(
            "q", agent="lorem", options={"words": 10_000, "words_per_s": 100}
        )
        got = await take(response, 2)
        relay.block_reconnects()
        await relay.drop()
        assert (await next_event(client)).kind == "reconnecting"
        assert not client.connected
        handles: list[InterruptHandle] = []

        async def interrupt() -> None:
            handles.append(await client.interrupt(response.request_id))

        async with trio.open_nursery() as inner:
            inner.start_soon(interrupt)
            await trio.testing.wait_all_tasks_blocked()
            assert response.ended  # optimistic: cut before anything is sent
            assert handles == []  # not on a socket yet
            relay.allow_reconnects()
        assert (await next_event(client)).kind == "resumed"
        (handle,) = handles
        with trio.fail_after(10):
            ack = await handle.acknowledged()
            done = await response.wait_server_done()
        assert ack.interrupted == (response.request_id,)
        assert (done.status, done.interrupted, done.local) == ("interrupted", True, False)
        check_seqs(got)
        assert done.frames == len(got) + response.stale_dropped
        assert client.violations == []


async def test_an_ack_lost_with_the_connection_is_resolved_by_resumed(start_server, relay_to):
    server = await start_server({"two": two_words_then_wait})
    relay = await relay_to(server)
    async with client_of(server, relay) as client:
        response = await client.request("q", agent="two")
        got = await take(response, 2)
        relay.hold_replies()
        handle = await client.interrupt(response.request_id)
        with trio.fail_after(10):
            await relay.held.wait()  # the server wrote its ACK; the client never reads it
        await relay.drop()
        assert (await next_event(client)).kind == "reconnecting"
        assert (await next_event(client)).kind == "resumed"
        with trio.fail_after(10):
            ack = await handle.acknowledged()
            done = await response.wait_server_done()
        assert ack.interrupted == (response.request_id,)
        check_seqs(got)
        assert (done.status, done.frames) == ("interrupted", 2)
        assert client.violations == []


async def test_a_resume_after_the_window_fails_with_connection_lost(start_server, relay_to):
    server = await start_server({"lorem": builtin.lorem}, resume_window_s=1)
    relay = await relay_to(server)
    events: list[ConnectionEvent] = []

    async def use_the_client() -> None:
        async with client_of(server, relay) as client:
            response = await client.request(
                "q", agent="lorem", options={"words": 10_000, "words_per_s": 100}
            )
            await take(response, 1)
            relay.block_reconnects()
            await relay.drop()
            events.append(await next_event(client))
            with trio.fail_after(10):
                await server.wait_idle()  # the window passed: the session is over
            relay.allow_reconnects()
            events.append(await next_event(client))
            with trio.fail_after(10):
                await trio.sleep_forever()  # the client ends the block

    with pytest.raises(ConnectionLost):
        await use_the_client()
    assert [e.kind for e in events] == ["reconnecting", "resume_failed"]
    assert isinstance(events[1].error, ServerError)
    assert events[1].error.code == "RESUME_UNKNOWN"


async def test_two_replies_survive_two_drops(start_server, relay_to):
    """Two requests at once, and a second drop resumed with the rotated token."""
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    options = {"words": 80, "words_per_s": 200}
    async with client_of(server, relay) as client:
        first = await client.request("q", agent="lorem", options=options)
        second = await client.request("q", agent="lorem", options=options)
        got = {first.request_id: await take(first, 3), second.request_id: await take(second, 1)}
        await relay.drop()
        got[first.request_id] += await take(first, 10)
        await relay.drop()
        with trio.fail_after(10):
            for response in (first, second):
                got[response.request_id] += [chunk async for chunk in response]
                assert (await response.done()).frames == 80
        for chunks in got.values():
            check_seqs(chunks)
            assert len(chunks) == 80
        kinds = [(await next_event(client)).kind for _ in range(4)]
        assert kinds == ["reconnecting", "resumed", "reconnecting", "resumed"]
        assert relay.connections == 3
        assert client.violations == []


async def test_a_spoken_reply_resumes_with_its_audio_intact(start_server, relay_to):
    server = await start_server({"echo": builtin.echo}, speech="builtin", audio_queue_ms=400)
    relay = await relay_to(server)
    text = " ".join(f"word{i}" for i in range(30))
    async with client_of(server, relay) as client:
        response = await client.request(text, agent="echo", voice=True, audio_pace=0)
        audio = response.audio()
        with trio.fail_after(10):
            heard = [await audio.__anext__() for _ in range(3)]
        await relay.drop()
        with trio.fail_after(10):
            heard += [chunk async for chunk in audio]
            words = [chunk async for chunk in response]
            done = await response.done()
        assert [c.seq for c in heard] == list(range(len(heard)))
        assert response.text.split() == text.split()
        check_seqs(words)
        assert (done.status, done.frames) == ("completed", 30)
        assert done.audio_ms == pytest.approx(sum(c.duration_ms for c in heard))
        assert client.violations == []


async def test_a_request_made_while_disconnected_is_sent_on_resume(start_server, relay_to):
    """It is not in the RESUME's last_seq (the server never read it): it runs as new."""
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    async with client_of(server, relay) as client:
        running = await client.request(
            "q", agent="lorem", options={"words": 10_000, "words_per_s": 100}
        )
        await take(running, 1)
        relay.block_reconnects()
        await relay.drop()
        assert (await next_event(client)).kind == "reconnecting"
        responses = []

        async def request() -> None:
            responses.append(await client.request("q", agent="lorem", options={"words": 5}))

        async with trio.open_nursery() as inner:
            inner.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            relay.allow_reconnects()
        assert (await next_event(client)).kind == "resumed"
        (late,) = responses
        with trio.fail_after(10):
            chunks = [chunk async for chunk in late]
            done = await late.done()
        check_seqs(chunks)
        assert (done.status, done.frames, len(chunks)) == ("completed", 5, 5)
        await client.interrupt(running.request_id)
        with trio.fail_after(10):
            assert (await running.wait_server_done()).status == "interrupted"
        assert client.violations == []


async def test_an_interrupt_all_made_while_disconnected_cuts_every_reply(start_server, relay_to):
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    options = {"words": 10_000, "words_per_s": 100}
    async with client_of(server, relay) as client:
        replies = [await client.request("q", agent="lorem", options=options) for _ in range(2)]
        for reply in replies:
            await take(reply, 1)
        relay.block_reconnects()
        await relay.drop()
        assert (await next_event(client)).kind == "reconnecting"
        handles: list[InterruptHandle] = []

        async def interrupt_all() -> None:
            handles.append(await client.interrupt())

        async with trio.open_nursery() as inner:
            inner.start_soon(interrupt_all)
            await trio.testing.wait_all_tasks_blocked()
            assert all(reply.ended for reply in replies)
            relay.allow_reconnects()
        (handle,) = handles
        with trio.fail_after(10):
            ack = await handle.acknowledged()
            dones = [await reply.wait_server_done() for reply in replies]
        assert sorted(ack.interrupted) == sorted(reply.request_id for reply in replies)
        assert [done.status for done in dones] == ["interrupted", "interrupted"]
        assert client.violations == []


async def test_a_request_lost_with_the_connection_ends_with_resume_gap(start_server, relay_to):
    """A REQUEST on the socket that the server never read: the RESUME names it, and
    the server answers that it knows nothing of it (a RESUME_GAP DONE, 0 frames)."""
    server = await start_server({"lorem": builtin.lorem})
    relay = await relay_to(server)
    async with client_of(server, relay) as client:
        relay.lose_requests()
        lost = await client.request("q", agent="lorem", options={"words": 5})
        await relay.drop()
        assert (await next_event(client)).kind == "reconnecting"
        assert (await next_event(client)).kind == "resumed"
        with trio.fail_after(10):
            done = await lost.wait_server_done()
        assert (done.status, done.frames) == ("failed", 0)
        assert done.error is not None
        assert done.error.code == "RESUME_GAP"
        assert client.violations == []
        # The session goes on: the next request runs.
        again = await client.request("q", agent="lorem", options={"words": 3})
        with trio.fail_after(10):
            assert (await again.done()).frames == 3


# --------------------------------------------------------------------------- check_agent


async def test_check_agent_resumes_mid_stream(autojump_clock):
    report = await check_agent(
        builtin.lorem, options={"words": 12, "words_per_s": 20}, scenarios=["resume mid-stream"]
    )
    assert report.scenarios["resume mid-stream"] == (
        "resumed after 1 frames; DONE completed after 12"
    )


async def test_check_agent_resumes_an_endless_agent(autojump_clock):
    async def endless(request: AgentRequest, stream: ResponseStream) -> None:
        while True:
            await stream.send(" more")
            await trio.sleep(0.01)

    report = await check_agent(endless, completes=False, scenarios=["resume mid-stream"])
    assert report.scenarios["resume mid-stream"].startswith(
        "resumed after 1 frames; DONE interrupted"
    )


async def test_check_agent_catches_a_replay_that_repeats_a_frame(autojump_clock, monkeypatch):
    """A server whose replay starts one frame early sends a frame twice."""
    replay = ReplayBuffer.replay

    def one_early(self: ReplayBuffer, request_id: str, last_seq: int, last_audio_seq: int = -1):
        return replay(self, request_id, last_seq - 1, last_audio_seq)

    monkeypatch.setattr(ReplayBuffer, "replay", one_early)
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(
            builtin.lorem,
            options={"words": 12, "words_per_s": 20},
            scenarios=["resume mid-stream"],
        )
    failure = caught.value
    assert failure.scenario == "resume mid-stream"
    assert "the connection drops after the first STREAM frame and the client resumes" in str(
        failure
    )
    rules = [finding.rule for finding in failure.findings]
    assert any(rule.startswith("guarantee 2") for rule in rules), rules
    assert (
        "guarantee 11: across a resume, every frame arrives once, in order, with exactly one DONE"
        in rules
    )
