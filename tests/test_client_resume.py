"""The Python client resumes a dropped session (protocol v1.2), against the scripted
fake server: every chunk once and in order, one DONE, missed ACKs resolved, an
interrupt made while disconnected sent after RESUMED, refusals and exhausted
attempts ending as ConnectionLost, and no change at all without a resume offer.

Time is a ``MockClock(autojump_threshold=0)`` (the ``autojump_clock`` fixture), so the
backoff waits cost nothing and nothing sleeps to synchronise.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from fake_server import FAKE_URL, FakeServer, start_fake, tone, voice_session_payload

from trio_agent.client import (
    ClientClosed,
    ConnectionEvent,
    ConnectionLost,
    ProtocolViolation,
    open_agent_client,
)


def resumable(fake: FakeServer, **options: Any) -> Any:
    """A client of ``fake`` that can reconnect to it."""
    options.setdefault("heartbeat_s", None)
    options.setdefault("strict", True)
    return open_agent_client(
        FAKE_URL, stream=fake.client_stream, open_stream=fake.open_stream, **options
    )


def kinds(events: list[ConnectionEvent]) -> list[str]:
    return [event.kind for event in events]


def drain_events(client: Any) -> list[ConnectionEvent]:
    events = []
    while True:
        try:
            events.append(client.events.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return events


async def test_a_reply_resumes_after_a_drop_with_every_chunk_once(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    async with resumable(fake) as client:
        response = await client.request("q", request_id="r1")
        await fake.recv_type("REQUEST")
        for seq, word in enumerate(["a", "b", "c"]):
            await fake.stream("r1", seq, word)
        got = [await response.__anext__() for _ in range(3)]
        await fake.drop()
        resume = await fake.accept_resume()
        assert resume["payload"]["last_seq"] == {"r1": 2}
        assert resume["payload"].get("last_audio_seq", {}) == {}
        await fake.stream("r1", 3, "d")  # the replay
        await fake.stream("r1", 4, "e")
        await fake.done("r1", 5)
        got += [chunk async for chunk in response]
        assert [chunk.seq for chunk in got] == [0, 1, 2, 3, 4]
        assert response.text == "abcde"
        done = await response.done()
        assert (done.status, done.frames) == ("completed", 5)
        assert kinds(drain_events(client)) == ["reconnecting", "resumed"]
        assert fake.connections == 2
        assert client.violations == []
        # The token rotated: a second drop resumes with the new one.
        second = await client.request("again", request_id="r2")
        await fake.recv_type("REQUEST")
        await fake.drop()
        resume = await fake.accept_resume()
        assert resume["payload"]["token"] == "token-1"
        assert resume["payload"]["last_seq"] == {"r2": -1}
        await fake.stream("r2", 0, "x")
        await fake.done("r2", 1)
        assert [chunk.delta async for chunk in second] == ["x"]


async def test_frames_not_consumed_at_the_drop_are_kept(nursery, autojump_clock):
    """Chunks that arrived but were not consumed are not asked for again."""
    fake = start_fake(nursery, resume=True)
    async with resumable(fake) as client:
        response = await client.request("q", request_id="r1")
        await fake.recv_type("REQUEST")
        await fake.stream("r1", 0, "a")
        await fake.stream("r1", 1, "b")
        await fake.heartbeat_reply({"msg_id": "unused"})  # a frame to know both were read
        await trio.testing.wait_all_tasks_blocked()
        await fake.drop()
        resume = await fake.accept_resume()
        assert resume["payload"]["last_seq"] == {"r1": 1}
        await fake.stream("r1", 2, "c")
        await fake.done("r1", 3)
        assert [chunk.delta async for chunk in response] == ["a", "b", "c"]


async def test_resumed_interrupts_resolve_a_pending_ack(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    async with resumable(fake) as client:
        response = await client.request("q", request_id="r1")
        await fake.recv_type("REQUEST")
        await fake.stream("r1", 0, "a")
        assert (await response.__anext__()).delta == "a"
        handle = await client.interrupt("r1")
        await fake.recv_type("INTERRUPT")
        await fake.drop()  # the ACK was written to the dropped connection
        await fake.accept_resume(requests={"r1": "done"}, interrupts={handle.msg_id: ["r1"]})
        await fake.stream("r1", 1, "stale")  # written before the ACK; replayed
        await fake.done("r1", 2, "interrupted", interrupted=True)
        ack = await handle.acknowledged()
        assert ack.interrupted == ("r1",)
        final = await response.wait_server_done()
        assert (final.status, final.frames) == ("interrupted", 2)
        assert response.stale_dropped == 1
        assert client.violations == []
        assert not [f for f in fake.received if f["msg_type"] == "INTERRUPT"][1:]


async def test_an_interrupt_made_while_disconnected_is_sent_after_resumed(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    async with resumable(fake) as client:
        response = await client.request("q", request_id="r1")
        await fake.recv_type("REQUEST")
        await fake.stream("r1", 0, "a")
        await fake.drop()
        while client.connected:
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0)
        async with trio.open_nursery() as inner:
            inner.start_soon(client.interrupt, "r1")
            await trio.testing.wait_all_tasks_blocked()
            assert response.ended  # optimistic: cut before anything is sent
            resume = await fake.accept_resume()
        after = await fake.recv()
        assert after["msg_type"] == "INTERRUPT"
        assert fake.received.index(resume) < fake.received.index(after)
        await fake.ack(after["msg_id"], ["r1"])
        await fake.done("r1", 1, "interrupted", interrupted=True)
        assert (await response.wait_server_done()).interrupted
        assert client.violations == []


async def test_a_request_the_server_never_saw_is_sent_again(nursery, autojump_clock):
    """A REQUEST written to a connection that dropped before the server read it is
    not in RESUMED.requests: it is sent again, right after RESUMED."""
    fake = start_fake(nursery, resume=True)
    async with resumable(fake) as client:
        response = await client.request("q", request_id="r1")
        await fake.drop()  # the fake never read the REQUEST
        resume = await fake.accept_resume(requests={})
        assert resume["payload"]["last_seq"] == {"r1": -1}
        again = await fake.recv()
        assert (again["msg_type"], again["request_id"]) == ("REQUEST", "r1")
        await fake.stream("r1", 0, "a")
        await fake.done("r1", 1)
        assert [chunk.delta async for chunk in response] == ["a"]


@pytest.mark.parametrize("code", ["RESUME_UNKNOWN", "RESUME_DENIED"])
async def test_a_refused_resume_ends_the_client_with_connection_lost(nursery, autojump_clock, code):
    fake = start_fake(nursery, resume=True)
    clients: list[Any] = []

    async def scenario() -> None:
        async with resumable(fake) as client:
            clients.append(client)
            clients.append(await client.request("q", request_id="r1"))
            await fake.recv_type("REQUEST")
            await fake.drop()
            await fake.refuse_resume(code)
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost, match=code):
        await scenario()
    client = clients[0]
    assert kinds(drain_events(client)) == ["reconnecting", "resume_failed"]
    with pytest.raises(ClientClosed) as closed:
        await clients[1].done()
    assert isinstance(closed.value.__cause__, ConnectionLost)
    assert fake.connections == 2


async def test_attempts_run_out(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    attempts = 0

    async def no_server() -> trio.abc.Stream:
        nonlocal attempts
        attempts += 1
        raise OSError("connection refused")

    started = trio.current_time()
    clients: list[Any] = []

    async def scenario() -> None:
        async with open_agent_client(
            FAKE_URL,
            stream=fake.client_stream,
            open_stream=no_server,
            heartbeat_s=None,
            resume_attempts=3,
            resume_backoff_s=1.0,
            resume_backoff_max_s=1.5,
        ) as client:
            clients.append(client)
            await fake.drop()
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost, match="could not be resumed"):
        await scenario()
    client = clients[0]
    events = drain_events(client)
    assert kinds(events) == ["reconnecting"] * 3 + ["resume_failed"]
    delays = [event.delay_s for event in events[:3]]
    assert all(d is not None for d in delays)
    assert 0.5 <= delays[0] <= 1.0  # type: ignore[operator]
    assert 0.75 <= delays[1] <= 1.5  # type: ignore[operator]
    assert 0.75 <= delays[2] <= 1.5  # type: ignore[operator]
    assert attempts == 3
    assert trio.current_time() - started == pytest.approx(sum(delays))  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"resume": False}, {"session_offers": False}])
async def test_without_resume_a_drop_ends_the_client_as_before(nursery, autojump_clock, options):
    fake = start_fake(nursery, resume=options.get("session_offers", True))
    clients: list[Any] = []

    async def scenario() -> None:
        async with resumable(fake, resume=options.get("resume", True)) as client:
            clients.append(client)
            await client.request("q", request_id="r1")
            await fake.recv_type("REQUEST")
            await fake.drop()
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost):
        await scenario()
    client = clients[0]
    assert drain_events(client) == []
    assert fake.connections == 1


@pytest.mark.parametrize("code", [1000, 1001, 1008, 4001])
async def test_a_close_that_ends_the_session_is_not_resumed(nursery, autojump_clock, code):
    fake = start_fake(nursery, resume=True)
    clients: list[Any] = []

    async def scenario() -> None:
        async with resumable(fake) as client:
            clients.append(client)
            await fake.connected.wait()
            await fake.close(code)
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost) as lost:
        await scenario()
    client = clients[0]
    assert lost.value.code == code
    assert drain_events(client) == []
    assert fake.connections == 1


async def test_strict_mode_catches_a_duplicate_in_the_replay(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    clients: list[Any] = []

    async def scenario() -> None:
        async with resumable(fake) as client:
            clients.append(client)
            await client.request("q", request_id="r1")
            await fake.recv_type("REQUEST")
            await fake.stream("r1", 0, "a")
            await fake.stream("r1", 1, "b")
            await fake.drop()
            await fake.accept_resume()
            await fake.stream("r1", 1, "b")  # already received: a duplicate
            await trio.sleep_forever()

    with pytest.raises(ProtocolViolation, match="seq=1"):
        await scenario()


async def test_strict_mode_catches_a_frame_of_another_session_after_resume(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    clients: list[Any] = []

    async def scenario() -> None:
        async with resumable(fake) as client:
            clients.append(client)
            await client.request("q", request_id="r1")
            await fake.recv_type("REQUEST")
            await fake.drop()
            await fake.accept_resume()
            await fake.send(
                "STREAM",
                request_id="r1",
                session_id=f"{fake.session_id}-2",
                payload={"seq": 0, "delta": "a"},
            )
            await trio.sleep_forever()

    with pytest.raises(ProtocolViolation, match="after resuming"):
        await scenario()


async def test_heartbeats_go_on_after_a_resume(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    async with resumable(fake, heartbeat_s=5.0) as client:
        await fake.heartbeat_reply(await fake.recv_type("HEARTBEAT"))
        await fake.drop()
        await fake.accept_resume()
        for _ in range(3):
            beat = await fake.recv_type("HEARTBEAT")
            await fake.heartbeat_reply(beat)
        assert client.connected
        assert fake.connections == 2


async def test_a_silent_server_is_resumed_after_the_heartbeat_timeout(nursery, autojump_clock):
    """A half-open connection (no answer to HEARTBEAT) is left for a new one."""
    fake = start_fake(nursery, resume=True)
    async with resumable(fake, heartbeat_s=5.0) as client:
        await fake.recv_type("HEARTBEAT")  # never answered
        await fake.accept_resume()
        seen = [event.kind async for event in _until_resumed(client)]
        assert seen == ["reconnecting", "resumed"]
        assert fake.connections == 2


async def _until_resumed(client: Any) -> Any:
    async for event in client.events:
        yield event
        if event.kind != "reconnecting":
            return


async def test_leaving_the_block_while_reconnecting_ends_everything(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)

    async def never() -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError

    with trio.move_on_after(60) as scope:
        async with open_agent_client(
            FAKE_URL, stream=fake.client_stream, open_stream=never, heartbeat_s=None
        ) as client:
            await fake.drop()
            async for event in client.events:
                if event.kind == "reconnecting":
                    break
    assert not scope.cancelled_caught


async def test_a_spoken_reply_resumes_each_sequence_where_it_stopped(nursery, autojump_clock):
    fake = start_fake(nursery, session=voice_session_payload(), resume=True)
    async with resumable(fake) as client:
        response = await client.request("q", request_id="r1", voice=True)
        await fake.recv_type("REQUEST")
        await fake.stream("r1", 0, "Hello", start_ms=0)
        await fake.audio("r1", 0, 0, tone(20))
        await fake.audio("r1", 1, 20, tone(20))
        assert (await response.__anext__()).delta == "Hello"
        await fake.drop()
        resume = await fake.accept_resume()
        assert resume["payload"]["last_seq"] == {"r1": 0}
        assert resume["payload"]["last_audio_seq"] == {"r1": 1}
        await fake.stream("r1", 1, " world", start_ms=40)
        await fake.audio("r1", 2, 40, tone(20))
        await fake.done("r1", 2, audio_ms=60.0)
        assert [chunk.delta async for chunk in response] == [" world"]
        assert [chunk.seq async for chunk in response.audio()] == [0, 1, 2]
        assert client.violations == []


async def test_a_request_cancelled_while_disconnected_is_never_sent(nursery, autojump_clock):
    fake = start_fake(nursery, resume=True)
    async with resumable(fake) as client:
        await fake.drop()
        with trio.move_on_after(0.01):
            await client.request("never", request_id="r9")
        await fake.accept_resume()
        await client.request("after", request_id="r2")
        after = await fake.recv_type("REQUEST")
        assert after["request_id"] == "r2"
        assert all(frame.get("request_id") != "r9" for frame in fake.received)


async def test_no_attempt_starts_after_the_window(nursery, autojump_clock):
    """The offer's window is 30 s: a first wait of 35 s or more is pointless."""
    fake = start_fake(nursery, resume=True)
    clients: list[Any] = []

    async def scenario() -> None:
        async with resumable(fake, resume_backoff_s=70.0, resume_backoff_max_s=70.0) as client:
            clients.append(client)
            await fake.drop()
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost, match="could not be resumed"):
        await scenario()
    assert kinds(drain_events(clients[0])) == ["resume_failed"]
    assert fake.connections == 1
