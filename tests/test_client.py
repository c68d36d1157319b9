"""The Python client, against the real server and against scripted fake servers.

Against the real server every client runs in ``strict`` mode, so besides what each
test asserts, any frame that breaks a guarantee fails the test. The fake servers
(``fake_server.py``) do what the real one never does: hold an ACK back, stop
answering, break the protocol on purpose.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from fake_server import FAKE_URL, start_fake
from testing_agents import Probe, endless

from trio_agent import AgentServer
from trio_agent import agents as builtin
from trio_agent.client import (
    AckTimeout,
    AgentClient,
    ClientClosed,
    ConnectionFailed,
    ConnectionLost,
    HeartbeatTimeout,
    ProtocolViolation,
    ServerError,
    open_agent_client,
)


@pytest.fixture(params=["memory", "socket"])
def transport(request) -> str:
    return request.param


def agent_set(probe=None, **extra):
    agents = {"lorem": builtin.lorem, "echo": builtin.echo, "endless": endless(probe)}
    agents.update(extra)
    return agents


@asynccontextmanager
async def agent_client(
    server: AgentServer, transport: str = "memory", **options: Any
) -> AsyncIterator[AgentClient]:
    """A strict client of ``server`` over memory streams or a loopback socket."""
    options = {"strict": True, "heartbeat_s": None, **options}
    if transport == "socket":
        async with open_agent_client(server.url, **options) as client:
            yield client
        return
    try:
        async with trio.open_nursery() as nursery:
            client_stream, server_stream = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_stream)
            async with open_agent_client(server.url, stream=client_stream, **options) as client:
                yield client
    except BaseExceptionGroup as group:
        # What the client's block raised, not the group of this helper's nursery.
        if len(group.exceptions) != 1:
            raise
        raise group.exceptions[0] from None


# --------------------------------------------------------------------------- the seed scenarios


async def test_normal_interrupt(start_server, transport):
    probe = Probe()
    server = await start_server(agent_set(probe))
    async with agent_client(server, transport) as client:
        response = await client.request("go", agent="endless")
        first = [await anext(response), await anext(response)]
        assert [chunk.seq for chunk in first] == [0, 1]

        handle = await client.interrupt(response.request_id)
        assert handle.cut == (response.request_id,)
        # Ended locally, before any ACK could be read.
        assert response.ended
        local = await response.done()
        assert (local.status, local.interrupted, local.local) == ("interrupted", True, True)
        assert local.reason == "USER_NEW_INPUT"
        assert [chunk async for chunk in response] == []

        ack = await handle.acknowledged()
        assert ack.interrupted == (response.request_id,)
        assert (ack.interrupted_count, ack.reason, dict(ack.targets)) == (1, "USER_NEW_INPUT", {})
        assert ack.rtt_s >= 0
        final = await response.wait_server_done()
        assert (final.status, final.interrupted, final.local) == ("interrupted", True, False)
        # What the server wrote = what arrived before the cut + what was dropped after it.
        assert final.frames == local.frames + response.stale_dropped
        assert response.server_done == final
    with trio.fail_after(5):
        await probe.any_cancelled.wait()
    assert probe.cancelled == [response.request_id]


async def test_interrupt_all(start_server, transport):
    server = await start_server(agent_set())
    async with agent_client(server, transport) as client:
        one = await client.request("one", agent="endless")
        two = await client.request("two", agent="endless")
        await anext(one)
        await anext(two)
        handle = await client.interrupt(reason="STOP_BUTTON")
        assert handle.request_id is None
        assert handle.cut == (one.request_id, two.request_id)
        assert one.ended
        assert two.ended
        ack = await handle.acknowledged()
        assert sorted(ack.interrupted) == sorted(handle.cut)
        assert (ack.interrupted_count, ack.reason) == (2, "STOP_BUTTON")
        for response in (one, two):
            final = await response.wait_server_done()
            assert final.interrupted
            assert final.reason == "STOP_BUTTON"


async def test_interrupt_a_request_that_does_not_exist(start_server, transport):
    server = await start_server(agent_set())
    async with agent_client(server, transport) as client:
        handle = await client.interrupt("ghost")
        assert handle.cut == ()
        ack = await handle.acknowledged()
        assert ack.interrupted == ()
        assert ack.interrupted_count == 0
        assert dict(ack.targets) == {"ghost": "unknown"}
        assert ack.stale_dropped == 0


async def test_new_request_right_after_interrupt_all_runs_untouched(start_server, transport):
    server = await start_server(agent_set())
    async with agent_client(server, transport) as client:
        old = await client.request("old", agent="endless")
        await anext(old)
        handle = await client.interrupt()
        # Asked at once, without waiting for the ACK.
        new = await client.request("new", agent="lorem", options={"words": 7, "words_per_s": 0})
        assert "".join([chunk.delta async for chunk in new]) == "".join(builtin.lorem_words(7))
        done = await new.done()
        assert (done.status, done.frames, done.local) == ("completed", 7, False)
        assert new.text == "".join(builtin.lorem_words(7))
        ack = await handle.acknowledged()
        assert ack.interrupted == (old.request_id,)


async def test_concurrent_interrupts_one_wins(start_server, transport):
    server = await start_server(agent_set())
    async with agent_client(server, transport) as client:
        response = await client.request("go", agent="endless")
        await anext(response)
        handles = [
            await client.interrupt(response.request_id),
            await client.interrupt(),
            await client.interrupt(response.request_id),
        ]
        # Locally the first one cut it; the others found nothing left to cut.
        assert [h.cut for h in handles] == [(response.request_id,), (), ()]
        acks = [await h.acknowledged() for h in handles]
        assert [a.interrupted_count for a in acks] == [1, 0, 0]
        assert dict(acks[2].targets) == {response.request_id: "already_done"}
        assert (await response.wait_server_done()).interrupted


# --------------------------------------------------------------------------- optimism


async def test_interrupt_ends_the_response_before_the_ack_and_drops_stale_frames(
    nursery, autojump_clock
):
    """The fake server holds the ACK back: the response is over locally anyway,
    the ACK times out (its own exception), a frame still in flight is dropped and
    counted, and when the ACK finally comes it reports all of it."""
    fake = start_fake(nursery)
    async with open_agent_client(
        FAKE_URL, stream=fake.client_stream, strict=True, heartbeat_s=None
    ) as client:
        response = await client.request("q", request_id="r1")
        assert (await fake.recv_type("REQUEST"))["request_id"] == "r1"
        await fake.stream("r1", 0, "a")
        await fake.stream("r1", 1, "b")
        assert (await anext(response)).delta == "a"
        await trio.testing.wait_all_tasks_blocked()  # "b" has arrived, not consumed

        t0 = trio.current_time()
        handle = await client.interrupt("r1")
        interrupt = await fake.recv_type("INTERRUPT")
        assert (interrupt["msg_id"], interrupt["request_id"]) == (handle.msg_id, "r1")

        local = await response.done()
        assert local.local
        assert local.status == "interrupted"
        assert local.frames == 2
        assert [chunk async for chunk in response] == []  # "b" was never shown
        assert response.text == "ab"

        await fake.stream("r1", 2, "c")  # sent before the server read the INTERRUPT
        await trio.testing.wait_all_tasks_blocked()
        assert response.stale_dropped == 1
        assert response.text == "ab"

        with pytest.raises(AckTimeout) as timeout:
            await handle.acknowledged(timeout=1.5)
        assert isinstance(timeout.value, trio.TooSlowError)
        assert handle.ack is None
        assert (await response.done()) == local  # the local state stays cleared

        await fake.ack(handle.msg_id, ["r1"])
        await fake.done("r1", 3, "interrupted", interrupted=True, reason="USER_NEW_INPUT")
        ack = await handle.acknowledged()
        assert ack.interrupted == ("r1",)
        assert ack.stale_dropped == 1
        assert ack.rtt_s == pytest.approx(trio.current_time() - t0)
        assert ack.rtt_s >= 1.5
        final = await response.wait_server_done()
        assert final.frames == 3 == local.frames + response.stale_dropped


async def test_a_request_the_server_had_finished_is_still_cut_locally(nursery, autojump_clock):
    """The server completed the request before the INTERRUPT: the ACK says
    already_done, the frames that follow are stale, and server_done says completed."""
    fake = start_fake(nursery)
    async with open_agent_client(
        FAKE_URL, stream=fake.client_stream, strict=True, heartbeat_s=None
    ) as client:
        response = await client.request("q", request_id="r1")
        await fake.recv_type("REQUEST")
        handle = await client.interrupt("r1")
        await fake.recv_type("INTERRUPT")
        await fake.ack(handle.msg_id, [], targets={"r1": "already_done"})
        ack = await handle.acknowledged()
        assert (ack.interrupted_count, dict(ack.targets)) == (0, {"r1": "already_done"})
        await fake.stream("r1", 0, "late")
        await fake.stream("r1", 1, " and later")
        await fake.done("r1", 2)
        final = await response.wait_server_done()
        assert final.status == "completed"
        assert (await response.done()).status == "interrupted"
        assert response.stale_dropped == 2
        assert response.text == ""
        assert client.violations == []


async def test_a_slow_consumer_delays_neither_an_ack_nor_another_response(
    start_server, autojump_clock
):
    """With a bounded buffer, the reader would stop at the flood's unread chunks and
    neither the live reply nor the ACK would ever be read (fail_after turns that
    deadlock into a failure)."""
    server = await start_server(agent_set())
    with trio.fail_after(10):
        async with agent_client(server) as client:
            # Nobody ever iterates this one: its chunks pile up in its buffer.
            flood = await client.request("flood", options={"words": 1000, "words_per_s": 0})
            live = await client.request("live", agent="endless")
            for _ in range(3):
                await anext(live)
            handle = await client.interrupt(live.request_id)
            ack = await handle.acknowledged(timeout=5)
            assert ack.interrupted == (live.request_id,)
            done = await flood.done()
            assert (done.status, done.frames) == ("completed", 1000)
            assert flood.text == "".join(builtin.lorem_words(1000))


async def test_cancelled_request_is_withdrawn(nursery, autojump_clock):
    """A ``request()`` cancelled while its REQUEST is being written is followed by an
    INTERRUPT for it; one cancelled while still queued is never sent at all."""
    fake = start_fake(nursery, lockstep=True)
    async with open_agent_client(
        FAKE_URL, stream=fake.client_stream, strict=True, heartbeat_s=None
    ) as client:
        await client.request("a", request_id="a")
        await client.request("b", request_id="b")
        with trio.move_on_after(1) as writing:
            await client.request("c", request_id="c")  # the fake reads nothing: blocked
        assert writing.cancelled_caught
        with trio.move_on_after(1) as queued:
            await client.request("d", request_id="d")
        assert queued.cancelled_caught
        frames = [await fake.recv() for _ in range(4)]
        assert [(f["msg_type"], f.get("request_id")) for f in frames] == [
            ("REQUEST", "a"),
            ("REQUEST", "b"),
            ("REQUEST", "c"),
            ("INTERRUPT", "c"),
        ]
        assert frames[3]["payload"]["reason"] == "CLIENT_CANCELLED"
        with trio.move_on_after(5):
            extra = await fake.recv()
            pytest.fail(f"unexpected frame {extra}")
        # "d" was never sent, so its id is free again.
        await client.request("d", request_id="d")


# --------------------------------------------------------------------------- errors


async def test_error_for_a_request_ends_it_with_the_code(start_server, transport):
    server = await start_server(agent_set())
    async with agent_client(server, transport) as client:
        response = await client.request("x", agent="nope")
        with pytest.raises(ServerError) as iterating:
            async for _ in response:
                pass  # pragma: no cover
        assert iterating.value.code == "UNKNOWN_AGENT"
        assert iterating.value.request_id == response.request_id
        with pytest.raises(ServerError, match="UNKNOWN_AGENT"):
            await response.done()
        # The connection is fine, and the id is free again.
        again = await client.request("x", agent="echo", request_id=response.request_id)
        assert (await again.done()).status == "completed"
        assert again.text == "x"


async def test_bad_calls_are_refused_before_anything_is_sent(start_server):
    server = await start_server(agent_set())
    async with agent_client(server) as client:
        with pytest.raises(ValueError, match="request_id"):
            await client.request("x", request_id="has spaces")
        with pytest.raises(ValueError, match="request_id"):
            await client.interrupt("has spaces")
        with pytest.raises(ValueError, match="timeout_s"):
            await client.request("x", timeout_s=-1)
        running = await client.request("x", agent="endless", request_id="r1")
        with pytest.raises(ValueError, match="still in use"):
            await client.request("y", request_id="r1")
        await client.interrupt("r1")
        await running.wait_server_done()
        reused = await client.request("z", agent="echo", request_id="r1")
        assert (await reused.done()).status == "completed"


async def test_interrupt_refused_with_an_error(nursery, autojump_clock):
    fake = start_fake(nursery)
    async with open_agent_client(
        FAKE_URL, stream=fake.client_stream, strict=True, heartbeat_s=None
    ) as client:
        handle = await client.interrupt()
        await fake.recv_type("INTERRUPT")
        await fake.error("INTERNAL_ERROR", "broken", ref=handle.msg_id)
        with pytest.raises(ServerError, match="INTERNAL_ERROR"):
            await handle.acknowledged()


# --------------------------------------------------------------------------- heartbeats


async def test_heartbeat_measures_the_round_trip(start_server):
    server = await start_server(agent_set())
    async with agent_client(server, "socket") as client:
        assert client.rtt_s is None
        rtt = await client.heartbeat()
        assert 0 < rtt < 5
        assert client.rtt_s == rtt


async def test_heartbeats_go_out_every_interval(nursery, autojump_clock):
    fake = start_fake(nursery)
    async with open_agent_client(FAKE_URL, stream=fake.client_stream, heartbeat_s=10) as client:
        t0 = trio.current_time()
        for _ in range(3):
            await fake.heartbeat_reply(await fake.recv_type("HEARTBEAT"))
        assert trio.current_time() - t0 == pytest.approx(20)
        await trio.testing.wait_all_tasks_blocked()
        assert client.rtt_s == 0  # MockClock: no time passes on memory streams


async def test_heartbeat_loss_ends_the_client_with_a_clear_error(nursery, autojump_clock):
    fake = start_fake(nursery)
    responses = []

    async def use_client() -> None:
        async with open_agent_client(
            FAKE_URL, stream=fake.client_stream, heartbeat_s=5, heartbeat_timeout_s=2
        ) as client:
            # The first HEARTBEAT is answered; the second is not.
            await fake.heartbeat_reply(await fake.recv_type("HEARTBEAT"))
            responses.append(await client.request("q"))
            await responses[0].done()  # never comes: the failure cancels the body

    t0 = trio.current_time()
    with pytest.raises(HeartbeatTimeout, match="did not answer a HEARTBEAT within 2 s"):
        await use_client()
    assert trio.current_time() - t0 == pytest.approx(7)
    with pytest.raises(ClientClosed):
        await responses[0].done()


async def test_server_going_away_ends_the_client(start_server, transport):
    server = await start_server(agent_set())

    async def use_client() -> None:
        async with agent_client(server, transport) as client:
            response = await client.request("x", agent="endless")
            await anext(response)
            server.shutdown()
            done = await response.done()
            assert (done.status, done.interrupted) == ("shutdown", False)
            await trio.sleep_forever()

    with pytest.raises(ConnectionLost) as lost:
        await use_client()
    assert lost.value.code == 1001
    assert "1001" in str(lost.value)


# --------------------------------------------------------------------------- strict mode


async def _stream_after_done(fake, client):
    await client.request("q", request_id="r1")
    await fake.recv_type("REQUEST")
    await fake.stream("r1", 0, "a")
    await fake.done("r1", 1)
    await fake.stream("r1", 1, "b")


async def _gap_in_seq(fake, client):
    await client.request("q", request_id="r1")
    await fake.recv_type("REQUEST")
    await fake.stream("r1", 0, "a")
    await fake.stream("r1", 2, "c")


async def _ack_for_unknown_interrupt(fake, client):
    await fake.ack("never-sent", [])


async def _frames_miscounted(fake, client):
    await client.request("q", request_id="r1")
    await fake.recv_type("REQUEST")
    await fake.stream("r1", 0, "a")
    await fake.done("r1", 5)


async def _second_ack(fake, client):
    handle = await client.interrupt()
    await fake.recv_type("INTERRUPT")
    await fake.ack(handle.msg_id, [])
    await fake.ack(handle.msg_id, [])


async def _stream_after_ack_named_it(fake, client):
    await client.request("q", request_id="r1")
    await fake.recv_type("REQUEST")
    handle = await client.interrupt("r1")
    await fake.recv_type("INTERRUPT")
    await fake.ack(handle.msg_id, ["r1"])
    await fake.stream("r1", 0, "a")


async def _stream_for_a_request_never_sent(fake, client):
    await fake.stream("stranger", 0, "a")


async def _not_json(fake, client):
    await fake.send_raw("{oops")


async def _malformed_frame(fake, client):
    await fake.send_raw('{"msg_type": "HEARTBEAT", "msg_id": "s9", "session_id": "x"}')  # no ts


@pytest.mark.parametrize(
    ("script", "guarantee"),
    [
        (_stream_after_done, 1),
        (_gap_in_seq, 2),
        (_ack_for_unknown_interrupt, 3),
        (_frames_miscounted, 2),
        (_second_ack, 3),
        (_stream_after_ack_named_it, 5),
        (_stream_for_a_request_never_sent, 8),
        (_not_json, None),
        (_malformed_frame, None),
    ],
)
async def test_strict_mode_catches_a_server_that_breaks_the_protocol(
    nursery, autojump_clock, script, guarantee
):
    fake = start_fake(nursery)

    async def use_client() -> None:
        async with open_agent_client(
            FAKE_URL, stream=fake.client_stream, strict=True, heartbeat_s=None
        ) as client:
            await script(fake, client)
            await trio.sleep_forever()  # the violation cancels the body

    with pytest.raises(ProtocolViolation) as caught:
        await use_client()
    assert caught.value.guarantee == guarantee
    assert str(caught.value).startswith("the server broke ")
    assert caught.value.frame


@pytest.mark.parametrize("script", [_stream_after_done, _gap_in_seq, _ack_for_unknown_interrupt])
async def test_without_strict_a_violation_is_recorded_and_the_client_goes_on(
    nursery, autojump_clock, script
):
    fake = start_fake(nursery)
    async with open_agent_client(FAKE_URL, stream=fake.client_stream, heartbeat_s=None) as client:
        await script(fake, client)
        await trio.testing.wait_all_tasks_blocked()
        assert len(client.violations) == 1
        other = await client.request("still here", request_id="r2")
        await fake.recv_type("REQUEST")
        await fake.done("r2", 0)
        assert (await other.done()).status == "completed"


# --------------------------------------------------------------------------- connecting, closing


async def test_token_is_offered_as_a_subprotocol(nursery, autojump_clock):
    fake = start_fake(nursery)
    async with open_agent_client(
        FAKE_URL, stream=fake.client_stream, token="s3cr3t", heartbeat_s=None
    ):
        assert fake.proposed_subprotocols == ("trio-agent.v1", "trio-agent.token.s3cr3t")
    fake = start_fake(nursery)
    async with open_agent_client(FAKE_URL, stream=fake.client_stream, heartbeat_s=None):
        assert fake.proposed_subprotocols == ("trio-agent.v1",)
    with pytest.raises(ValueError, match="token"):
        async with open_agent_client(FAKE_URL, token="has space"):
            pass  # pragma: no cover


async def test_session_frame_is_exposed(start_server):
    server = await start_server(agent_set(), max_concurrent_requests=3)
    async with agent_client(server) as client:
        assert client.session_id in server.sessions
        assert list(client.agents) == ["lorem", "echo", "endless"]
        assert client.agents["lorem"].description.startswith("Deterministic")
        assert client.default_agent == "lorem"
        assert client.limits.max_concurrent_requests == 3
        assert client.server.startswith("trio-agent/")
        assert client.protocol == "1.2"


async def test_cannot_connect_gives_connection_failed(start_server, nursery, autojump_clock):
    server = await start_server(agent_set())
    with pytest.raises(ConnectionFailed) as refused:
        async with open_agent_client(f"ws://127.0.0.1:{server.port}/elsewhere"):
            pass  # pragma: no cover
    assert refused.value.status_code == 404
    fake = start_fake(nursery, send_session=False)
    with pytest.raises(ConnectionFailed, match="no SESSION"):
        async with open_agent_client(FAKE_URL, stream=fake.client_stream, connect_timeout_s=3):
            pass  # pragma: no cover


async def test_a_first_frame_that_is_not_session_fails_the_connection(nursery, autojump_clock):
    fake = start_fake(nursery, send_session=False)

    async def send_wrong_first_frame():
        await fake.connected.wait()
        await fake.stream("r1", 0, "hello?")

    nursery.start_soon(send_wrong_first_frame)
    with pytest.raises(ConnectionFailed, match="not a valid SESSION"):
        async with open_agent_client(FAKE_URL, stream=fake.client_stream):
            pass  # pragma: no cover


async def test_nothing_listening_gives_connection_failed():
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            async with open_agent_client(f"ws://127.0.0.1:{port}/ws"):
                pass  # pragma: no cover


async def test_wss_to_a_server_without_tls_fails_clearly(start_server):
    server = await start_server(agent_set())
    with pytest.raises(ConnectionFailed, match=r"cannot connect to wss://.*(SSL|ssl)"):
        async with open_agent_client(f"wss://127.0.0.1:{server.port}/ws"):
            pass  # pragma: no cover


async def test_an_error_in_the_body_leaves_unwrapped_and_closes_everything(start_server, transport):
    probe = Probe()
    server = await start_server(agent_set(probe))
    nurseries = len(trio.lowlevel.current_task().child_nurseries)
    used = {}

    async def use_client() -> None:
        async with agent_client(server, transport) as client:
            used["client"], used["response"] = client, await client.request("x", agent="endless")
            await anext(used["response"])
            assert len(trio.lowlevel.current_task().child_nurseries) > nurseries
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        await use_client()
    client, response = used["client"], used["response"]
    # Every task of the client is gone with its nursery.
    assert len(trio.lowlevel.current_task().child_nurseries) == nurseries
    # The server saw the connection go, and cancelled the request.
    with trio.fail_after(5):
        await server.wait_idle()
    assert probe.cancelled == [response.request_id]
    # What still waited on the server now fails clearly instead of hanging.
    with pytest.raises(ClientClosed):
        await response.done()
    with pytest.raises(ClientClosed):
        await client.request("too late")


async def test_waiters_outside_the_block_are_woken_when_it_ends(nursery, autojump_clock):
    """Tasks outside the client's block that wait on it fail with ClientClosed when
    the block ends, instead of hanging (or waiting out an ACK timeout)."""
    fake = start_fake(nursery)
    failures: dict[str, BaseException] = {}

    async def wait(name, wait_for):
        try:
            await wait_for()
        except ClientClosed as exc:
            failures[name] = exc

    async with (
        trio.open_nursery() as outside,
        open_agent_client(FAKE_URL, stream=fake.client_stream, heartbeat_s=None) as client,
    ):
        response = await client.request("q")
        handle = await client.interrupt("ghost")
        outside.start_soon(wait, "done", response.done)
        outside.start_soon(wait, "ack", lambda: handle.acknowledged(timeout=None))
        await trio.testing.wait_all_tasks_blocked()
        assert failures == {}
    assert set(failures) == {"done", "ack"}
