"""What any agent may ask of the server: DONE fields, a deferred DONE, the delivered
deltas, its own errors and timeouts, per-session state, and a lifetime for its
resources. The openai agent is built on these; here they are tested with toy agents.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import trio
import trio.testing
from testing_agents import endless

from trio_agent import AgentError, AgentRequest, AgentServer, ResponseStream, ServerConfig
from trio_agent import agents as builtin
from trio_agent.agents import AgentTimeout, RequestOutcome
from trio_agent.testing.wire import connect, only


def streams(rid, count=1):
    def seen(f):
        return (
            f["msg_type"] == "STREAM"
            and f["request_id"] == rid
            and f["payload"]["seq"] >= count - 1
        )

    return seen


# --------------------------------------------------------------------------- DONE fields


async def test_an_agent_adds_fields_to_its_done_and_cannot_break_it(start_server):
    refused: list[str] = []

    async def annotating(request: AgentRequest, stream: ResponseStream) -> None:
        await stream.send("a")
        for bad in ({"status": "completed"}, {"frames": 9}, {"obj": object()}, {"x": math.nan}):
            try:
                stream.add_done_fields(**bad)
            except (TypeError, ValueError) as exc:
                refused.append(type(exc).__name__)
        stream.add_done_fields(tokens_billed=12, model={"name": "m"})

    server = await start_server({"annotating": annotating})
    async with connect(server) as c:
        await c.request("r1", agent="annotating")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done == {
            "status": "completed",
            "interrupted": False,
            "frames": 1,
            "tokens_billed": 12,
            "model": {"name": "m"},
        }
        assert refused == ["ValueError", "ValueError", "TypeError", "ValueError"]
        c.assert_guarantees()


async def test_agent_error_details_and_agent_timeouts_reach_the_done(start_server):
    async def upstream_says_no(request: AgentRequest, stream: ResponseStream) -> None:
        raise AgentError("UPSTREAM_ERROR", "bad gateway", upstream_status=502)

    async def own_deadline(request: AgentRequest, stream: ResponseStream) -> None:
        await stream.send("partial")
        raise AgentTimeout("my model went quiet")

    server = await start_server({"no": upstream_says_no, "quiet": own_deadline})
    async with connect(server) as c:
        await c.request("r1", agent="no")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "failed"
        assert done["error"] == {
            "code": "UPSTREAM_ERROR",
            "message": "bad gateway",
            "upstream_status": 502,
        }
        await c.request("r2", agent="quiet")
        done = (await c.until_done("r2"))[-1]["payload"]
        assert done == {
            "status": "timeout",
            "interrupted": False,
            "reason": "my model went quiet",
            "frames": 1,
        }
        c.assert_guarantees()
    with pytest.raises(TypeError):
        AgentError("X", "y", when=object())


# --------------------------------------------------------------------------- deferred DONE


def slow_cleanup(cleanup_s: float, *, defer: bool):
    """Streams until cancelled, then spends ``cleanup_s`` closing something and says
    so in its DONE."""

    async def agent(request: AgentRequest, stream: ResponseStream) -> None:
        if defer:
            stream.defer_done()
        try:
            while True:
                await stream.send(" w")
                await trio.sleep(0.01)
        finally:
            with trio.move_on_after(10, shield=True):
                await trio.sleep(cleanup_s)
            stream.add_done_fields(cleaned_up=True)

    return agent


@pytest.mark.parametrize("defer", [True, False])
async def test_a_deferred_done_waits_for_cleanup_and_the_ack_does_not(
    start_server, autojump_clock, defer
):
    server = await start_server({"slow": slow_cleanup(0.25, defer=defer)})
    async with connect(server) as c:
        await c.request("r1", agent="slow")
        await c.recv_until(streams("r1"))
        t0 = trio.current_time()
        await c.until_ack(await c.interrupt("r1"))
        assert trio.current_time() - t0 < 0.01
        done = await c.recv()
        assert done["msg_type"] == "DONE"
        if defer:
            assert trio.current_time() - t0 >= 0.25
            assert done["payload"]["cleaned_up"] is True
        else:
            assert trio.current_time() - t0 < 0.01
            assert "cleaned_up" not in done["payload"]
        assert done["payload"]["status"] == "interrupted"
        c.assert_guarantees()


async def test_shutdown_sends_a_deferred_done_that_is_still_waiting(start_server, autojump_clock):
    server = await start_server({"slow": slow_cleanup(1.0, defer=True)}, cleanup_grace_s=2.0)
    async with connect(server) as c:
        await c.request("r1", agent="slow")
        await c.recv_until(streams("r1"))
        await c.until_ack(await c.interrupt("r1"))
        server.shutdown()
        assert await c.until_closed() == 1001
        dones = only(c.received, "DONE", "r1")
        assert len(dones) == 1
        assert dones[0]["payload"]["status"] == "interrupted"
        c.assert_guarantees()
    with trio.fail_after(10):
        await server.wait_idle()


# --------------------------------------------------------------------------- on_done


def fast_talker(outcomes: list[RequestOutcome], words: int = 1000):
    async def agent(request: AgentRequest, stream: ResponseStream) -> None:
        stream.on_done(outcomes.append)
        for i in range(words):
            await stream.send(f" {i}")

    return agent


async def test_on_done_reports_exactly_the_deltas_the_client_received(start_server, autojump_clock):
    outcomes: list[RequestOutcome] = []
    server = await start_server({"fast": fast_talker(outcomes)}, stream_lane_capacity=4)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="fast")
        await c.recv_until(streams("r1", 3))
        await trio.testing.wait_all_tasks_blocked()
        await c.until_ack(await c.interrupt("r1"))
        done = (await c.until_done("r1"))[-1]["payload"]
        # Already run: the callback is called before the DONE is written.
        (outcome,) = outcomes
        received = [f["payload"]["delta"] for f in only(c.received, "STREAM", "r1")]
        assert outcome.frames == done["frames"] == len(received)
        assert list(outcome.delivered) == received
        assert outcome.text == "".join(received)
        assert outcome.status == "interrupted"
        c.assert_guarantees()


async def test_on_done_of_a_completed_request_and_in_the_order_requests_end(start_server):
    outcomes: list[RequestOutcome] = []

    async def waits_for_a_word(request: AgentRequest, stream: ResponseStream) -> None:
        stream.on_done(outcomes.append)
        await stream.send("first")
        await trio.sleep_forever()

    server = await start_server(
        {"fast": fast_talker(outcomes, words=3), "waiting": waits_for_a_word}
    )
    async with connect(server) as c:
        await c.request("w", agent="waiting")
        await c.recv_until(streams("w"))
        await c.request("f", agent="fast")
        await c.until_done("f")
        await c.interrupt("w")
        await c.until_done("w")
    assert [(o.request_id, o.status, o.text) for o in outcomes] == [
        ("f", "completed", " 0 1 2"),
        ("w", "interrupted", "first"),
    ]


async def test_on_done_must_come_before_the_first_send(start_server):
    async def late(request: AgentRequest, stream: ResponseStream) -> None:
        await stream.send("x")
        stream.on_done(print)

    server = await start_server({"late": late})
    async with connect(server) as c:
        await c.request("r1", agent="late")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert "before the first send" in done["error"]["message"]


async def test_an_agent_cut_while_waiting_for_room_sees_a_cancellation(
    start_server, autojump_clock
):
    """The interrupt's discard makes room and wakes the agent in the same tick as the
    cancellation: the agent must get ``Cancelled``, not an error about a closed request."""
    seen: list[str] = []

    async def agent(request: AgentRequest, stream: ResponseStream) -> None:
        try:
            while True:
                await stream.send(" w")
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise

    server = await start_server({"a": agent}, stream_lane_capacity=2)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="a")
        await c.recv_until(streams("r1"))
        await trio.testing.wait_all_tasks_blocked()
        await c.until_ack(await c.interrupt("r1"))
        await c.until_done("r1")
    assert seen == ["Cancelled"]


# --------------------------------------------------------------------------- state and lifetime


async def test_session_state_lives_as_long_as_its_session(start_server):
    async def counter(request: AgentRequest, stream: ResponseStream) -> None:
        count = request.session_state.get(counter, 0) + 1
        request.session_state[counter] = count
        await stream.send(str(count))

    server = await start_server({"count": counter})
    async with connect(server) as alice, connect(server) as bob:
        for rid in ("a1", "a2", "a3"):
            await alice.request(rid, agent="count")
            await alice.until_done(rid)
        await bob.request("b1", agent="count")
        await bob.until_done("b1")
        assert [f["payload"]["delta"] for f in only(alice.received, "STREAM")] == ["1", "2", "3"]
        assert [f["payload"]["delta"] for f in only(bob.received, "STREAM")] == ["1"]


class Resourceful:
    """An agent that holds a resource: open while the server runs, closed after."""

    def __init__(self, events: list[str], server: list[AgentServer]) -> None:
        self.events = events
        self.server = server

    async def __aenter__(self) -> Resourceful:
        self.events.append("open")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sessions = len(self.server[0].sessions)
        self.events.append(f"close with {sessions} sessions")

    async def __call__(self, request: AgentRequest, stream: ResponseStream) -> None:
        self.events.append("serve")
        await stream.send("ok")


class Unconfigured:
    """An agent with nothing to talk to."""

    unavailable_reason = "set MY_MODEL_URL first"

    async def __call__(self, request: AgentRequest, stream: ResponseStream) -> None:
        raise AssertionError("never called")  # pragma: no cover


async def test_agents_are_opened_before_serving_and_closed_after_the_last_session():
    events: list[str] = []
    holder: list[AgentServer] = []
    agent = Resourceful(events, holder)
    server = AgentServer(
        ServerConfig(port=0), {"res": agent, "none": Unconfigured(), "echo": builtin.echo}
    )
    holder.append(server)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert events == ["open"]
        async with connect(server, "socket") as c:
            entry = c.session["payload"]["agents"]["none"]
            assert entry == {
                "description": "An agent with nothing to talk to.",
                "available": False,
                "unavailable_reason": "set MY_MODEL_URL first",
            }
            await c.request("r1", agent="none")
            error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
            assert error["payload"]["code"] == "UNKNOWN_AGENT"
            assert "set MY_MODEL_URL first" in error["payload"]["message"]
            await c.request("r2", agent="res")
            await c.until_done("r2")
            server.shutdown()
            await c.until_closed()
    assert events == ["open", "serve", "close with 0 sessions"]


async def test_an_agent_that_cannot_open_stops_the_server_before_it_listens():
    class Broken:
        async def __aenter__(self) -> None:
            raise OSError("no GPU")

        async def __aexit__(self, *exc_info: object) -> None:  # pragma: no cover
            pass

        async def __call__(self, request: AgentRequest, stream: ResponseStream) -> None:
            pass  # pragma: no cover

    server = AgentServer(replace(ServerConfig(port=0)), {"broken": Broken(), "echo": endless()})
    with pytest.raises(OSError, match="no GPU"):
        await server.run()
    assert server.port is None
