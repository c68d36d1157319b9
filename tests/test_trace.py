"""Trace mode: what a session records, in which order, by which task."""

from __future__ import annotations

import inspect
import json

import trio
import trio.testing
from testing_agents import endless, stubborn

from trio_agent import AgentServer, ServerConfig
from trio_agent import agents as builtin
from trio_agent.agents import shielded_cleanup
from trio_agent.observability.trace import (
    NO_TRACE,
    MemoryTracer,
    RecordingSessionTrace,
    SessionTrace,
)
from trio_agent.server.config import parse_config
from trio_agent.testing.wire import connect, only


def traced_server(agents=None, **settings) -> tuple[AgentServer, MemoryTracer]:
    tracer = MemoryTracer()
    agents = agents or {"lorem": builtin.lorem, "endless": endless()}
    server = AgentServer(ServerConfig(port=0, **settings), agents, trace=tracer)
    return server, tracer


def kinds(events, request_id=None) -> list[str]:
    return [e["event"] for e in events if request_id is None or e["request"] == request_id]


def one(events, kind, **match):
    found = [
        e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, (kind, match, found)
    return found[0]


async def test_an_interrupt_of_a_request_held_by_backpressure(autojump_clock):
    server, tracer = traced_server(stream_lane_capacity=4)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="lorem", words=50, words_per_s=0)
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        # Let the writer block on the unread socket and the agent fill the lane:
        # the request is then held by backpressure when the INTERRUPT is read.
        await trio.testing.wait_all_tasks_blocked()
        ack_id = await c.interrupt("r1")
        await c.until_done("r1")
    await server.wait_idle()
    events = tracer.events
    assert {e["session"] for e in events} == {c.session_id}
    assert all(isinstance(e["t_us"], int) for e in events)

    read = one(events, "interrupt_read", msg_id=ack_id)
    assert (read["task"], read["request"], read["reason"]) == ("reader", "r1", "USER_NEW_INPUT")
    # The reader handles the INTERRUPT in one step: discard, cancel, ACK, DONE.
    start = events.index(read)
    assert kinds(events[start : start + 5]) == [
        "interrupt_read",
        "scope_cancelled",
        "stream_discarded",
        "ack_queued",
        "done_queued",
    ]
    assert all(e["task"] == "reader" for e in events[start : start + 5])
    discarded = one(events, "stream_discarded", request="r1")
    cancelled = one(events, "scope_cancelled", request="r1")
    assert (cancelled["by"], cancelled["status"]) == (ack_id, "interrupted")
    assert one(events, "done_queued", request="r1")["lane"] == "priority"

    # Discarded frames are exactly the queued tail, and none of them is written.
    queued = [e["seq"] for e in events if e["event"] == "stream_queued"]
    written = [e["seq"] for e in events if e["event"] == "stream_written"]
    assert discarded["last_seq"] == max(queued)
    assert discarded["count"] == discarded["last_seq"] - discarded["first_seq"] + 1
    assert written == list(range(len(written)))
    assert max(written) < discarded["first_seq"]
    done = one(events, "done_written", request="r1")
    assert done["frames"] == len(written) == len(only(c.received, "STREAM", "r1"))

    # The agent was waiting for room in the stream lane: Cancelled comes out of
    # stream.send, sent by the reader, and the request scope catches it.
    delivered = one(events, "cancel_delivered", request="r1")
    assert delivered["task"] == "request r1"
    assert (delivered["source"], delivered["source_task"]) == ("explicit", "reader")
    assert ack_id in delivered["reason"]
    assert any("wait_for_stream_room" in frame for frame in delivered["stack"])
    closed = one(events, "scope_closed", request="r1")
    assert (closed["outcome"], closed["status"]) == ("cancelled", "interrupted")

    ack = one(events, "ack_written", ref=ack_id)
    assert ack["task"] == "writer"
    assert ack["latency_us"] == ack["t_us"] - read["t_us"]
    # Guarantee 5 as the trace sees it: nothing of r1 is written between the ACK
    # and r1's DONE, and the DONE follows the ACK. (The agent's own unwinding may
    # be traced in between: the writer flushes the ACK before taking the DONE.)
    after_ack = events[events.index(ack) :]
    written = [k for k in kinds(after_ack, "r1") if k.endswith("_written")]
    assert written[:2] == ["ack_written", "done_written"]


async def test_a_timeout_is_the_scopes_own_deadline(autojump_clock):
    server, tracer = traced_server()
    async with connect(server, "memory") as c:
        await c.request("slow", agent="endless", timeout_s=0.05)
        await c.until_done("slow")
    await server.wait_idle()
    events = tracer.events
    opened = one(events, "scope_opened", request="slow")
    assert (opened["agent"], opened["timeout_s"]) == ("endless", 0.05)
    assert "scope_cancelled" not in kinds(events)  # nobody called cancel()
    delivered = one(events, "cancel_delivered", request="slow")
    assert delivered["source"] == "deadline"
    assert delivered["t_us"] - opened["t_us"] == 50_000
    assert delivered["checkpoint"] == "sleep"
    assert delivered["stack"][-1].startswith("testing_agents.py:")
    assert one(events, "done_queued", request="slow")["lane"] == "stream"
    assert one(events, "scope_closed", request="slow")["outcome"] == "cancelled"
    assert one(events, "done_written", request="slow")["status"] == "timeout"


async def test_a_disconnect_cancels_the_session_nursery(autojump_clock):
    server, tracer = traced_server()
    async with connect(server, "memory") as c:
        await c.request("r1", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        await trio.aclose_forcefully(c.stream)
        await server.wait_idle()
    events = tracer.events
    nursery = one(events, "nursery_cancelled")
    delivered = one(events, "cancel_delivered", request="r1")
    closed = one(events, "scope_closed", request="r1")
    assert events.index(nursery) < events.index(delivered) < events.index(closed)
    assert delivered["source"] == "explicit"
    assert delivered["reason"].startswith("session closing:")
    # The request scope was not cancelled itself: Cancelled passes through it.
    assert (closed["outcome"], closed["cancel_called"]) == ("cancelled from outside", False)
    cleanup = [e for e in events if e["event"].startswith("cleanup_")]
    assert [(e["event"], e["what"]) for e in cleanup] == [
        ("cleanup_started", "wait for request tasks"),
        ("cleanup_ended", "wait for request tasks"),
    ]
    assert cleanup[1]["timed_out"] is False
    assert kinds(events)[-1] == "session_closed"


async def test_an_agent_sending_after_its_end_is_traced(autojump_clock):
    server, tracer = traced_server({"stubborn": stubborn(0.5)}, cleanup_grace_s=5.0)
    async with connect(server, "memory") as c:
        await c.request("r1", agent="stubborn")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        await c.until_ack(await c.interrupt("r1"))
        await c.until_done("r1")
    await server.wait_idle()
    late = one(tracer.events, "late_send", request="r1")
    assert (late["task"], late["status"]) == ("request r1", "interrupted")
    delivered = one(tracer.events, "cancel_delivered", request="r1")
    assert delivered["t_us"] - late["t_us"] == 0  # it then re-raises Cancelled


async def test_shielded_cleanup_is_traced_on_the_request_lane(autojump_clock):
    async def careful(request, stream):
        try:
            await stream.send("x")
            await trio.sleep_forever()
        finally:
            with shielded_cleanup(1.0, "close upstream"):
                await trio.sleep(0.2)
            with shielded_cleanup(0.1, "too slow") as scope:
                await trio.sleep(5)
            assert scope.cancelled_caught

    server, tracer = traced_server({"careful": careful})
    async with connect(server, "memory") as c:
        await c.request("r1", agent="careful")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        await c.interrupt("r1")
        await c.until_done("r1")
    await server.wait_idle()
    cleanup = [e for e in tracer.events if e["event"].startswith("cleanup_") and e["request"]]
    assert [(e["event"], e["what"], e["request"], e["task"]) for e in cleanup] == [
        ("cleanup_started", "close upstream", "r1", "request r1"),
        ("cleanup_ended", "close upstream", "r1", "request r1"),
        ("cleanup_started", "too slow", "r1", "request r1"),
        ("cleanup_ended", "too slow", "r1", "request r1"),
    ]
    assert [e.get("timed_out") for e in cleanup] == [None, False, None, True]
    assert cleanup[1]["t_us"] - cleanup[0]["t_us"] == 200_000
    assert cleanup[3]["t_us"] - cleanup[2]["t_us"] == 100_000


async def test_shielded_cleanup_works_untraced():
    with trio.CancelScope() as outer:
        outer.cancel()
        with shielded_cleanup(1.0) as scope:
            await trio.sleep(0)  # shielded: the outer cancellation waits
        assert not scope.cancelled_caught
        await trio.lowlevel.checkpoint()  # ...and lands at the next checkpoint
    assert outer.cancelled_caught


async def test_tracing_is_off_by_default(start_server):
    server = await start_server()
    assert server.tracer is NO_TRACE
    assert NO_TRACE.session("s") is NO_TRACE.session("t")
    assert not NO_TRACE.session("s").enabled


def test_the_off_trace_has_every_hook_the_recorder_has():
    """A session calls hooks on whichever it holds: the off one must not miss any,
    and its hooks must do nothing at all."""

    def hooks(cls):
        return {
            name
            for name, member in vars(cls).items()
            if inspect.isfunction(member) and not name.startswith("_")
        }

    assert hooks(RecordingSessionTrace) == hooks(SessionTrace)
    off = NO_TRACE.session("s")
    for name in hooks(SessionTrace):
        parameters = list(inspect.signature(getattr(off, name)).parameters)
        # Called outside Trio, with nothing usable: an off hook that looked at
        # its arguments or read the clock would raise.
        assert getattr(off, name)(*[None] * len(parameters)) is None, name


async def test_the_trace_setting_writes_json_lines(start_server, tmp_path):
    path = tmp_path / "trace.jsonl"
    server = await start_server(trace=str(path))
    async with connect(server, "socket") as c:
        await c.request("r1", agent="echo", input="zebra quartz fjord")
        await c.until_done("r1")
    await server.wait_idle()  # a closed session is flushed
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert events[0]["event"] == "session_opened"
    assert events[-1]["event"] == "session_closed"
    assert [e["seq"] for e in events if e["event"] == "stream_written"] == [0, 1, 2]
    assert "zebra" not in path.read_text()  # ids and timings only, never the text


def test_trace_flag_and_variable():
    assert parse_config(["--trace", "t.jsonl"]).trace == "t.jsonl"
    assert parse_config([], {"TRIO_AGENT_TRACE": "/tmp/x"}).trace == "/tmp/x"
    assert parse_config([]).trace == ""
