"""Draining a node (cluster mode's SIGTERM): 1012 when a session is quiet, DONE{shutdown} at drain_s.

Over real sockets, with the clock frozen (``mock_clock``: time moves only when a
test jumps it), so that "before drain_s" and "at drain_s" are exact while the
bytes travel through the kernel; the bound on the server's exit runs over memory
streams with the autojump clock, against a client that never reads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import trio
import trio.testing
from handshakes import raw_handshake
from http_client import fetch
from trio_websocket import ConnectionClosed

from trio_agent import AgentRequest, AgentServer, ResponseStream, ServerConfig
from trio_agent.protocol import CloseCode
from trio_agent.server.drain import DRAIN_CLOSE_REASON
from trio_agent.testing.wire import WireClient, connect, only, open_wire_stream

DRAIN_S = 30.0
#: Words sent before and after the gate: more than the stream lane holds, so frames
#: are still queued when the request ends and the drain closes the connection.
WORDS_BEFORE, WORDS_AFTER = 3, 40


class Gate:
    """An agent that sends a few words, waits for the test to open the gate, then
    sends many more as fast as the lane takes them and returns."""

    def __init__(self) -> None:
        self.opened = trio.Event()
        self.waiting = trio.Event()
        self.finished = trio.Event()

    async def __call__(self, request: AgentRequest, stream: ResponseStream) -> None:
        for i in range(WORDS_BEFORE):
            await stream.send(f" w{i}")
        self.waiting.set()
        await self.opened.wait()
        for i in range(WORDS_BEFORE, WORDS_BEFORE + WORDS_AFTER):
            await stream.send(f" w{i}")
        self.finished.set()


@asynccontextmanager
async def running_server(
    agents: dict[str, Any], **settings: Any
) -> AsyncIterator[tuple[AgentServer, trio.Event]]:
    """A server on a free port; the event is set once its ``run`` has returned. The
    block fails after 30 s of real time, whatever the test's clock says."""
    config = replace(ServerConfig(port=0, stream_lane_capacity=4, drain_s=DRAIN_S), **settings)
    server = AgentServer(config, agents)
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await server.run(task_status=task_status)
            finally:
                stopped.set()

        await nursery.start(run)
        try:
            async with real_time_limit(30):
                yield server, stopped
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def real_time_limit(seconds: float = 10.0) -> AsyncIterator[None]:
    """Fail a block that takes more than ``seconds`` of real time: the test's clock is
    frozen, so ``trio.fail_after`` would never fire and a broken drain would hang."""
    async with trio.open_nursery() as nursery:

        async def watchdog() -> None:
            await trio.to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)
            raise TimeoutError(f"still waiting after {seconds:g} s of real time")

        nursery.start_soon(watchdog)
        yield
        nursery.cancel_scope.cancel()


async def closed_with(c: WireClient) -> tuple[int | None, str | None]:
    """Receive (and record) until the server closes; the close frame's code and reason."""
    try:
        while True:
            await c.recv()
    except ConnectionClosed as closed:
        reason = closed.reason
    return (reason.code, reason.reason) if reason is not None else (None, None)


async def test_an_idle_session_is_closed_with_1012_at_once(mock_clock):
    async with running_server({}) as (server, stopped), connect(server, "socket") as c:
        server.drain()
        assert await closed_with(c) == (CloseCode.SERVICE_RESTART, DRAIN_CLOSE_REASON)
        async with real_time_limit():
            await stopped.wait()
        assert trio.current_time() == 0


async def test_a_running_request_finishes_then_1012_follows_its_done_with_no_frame_lost(
    mock_clock,
):
    gate = Gate()
    async with running_server({"gate": gate}) as (server, stopped):
        async with connect(server, "socket") as c:
            await c.request("r1", agent="gate")
            await gate.waiting.wait()
            server.drain()
            await trio.testing.wait_all_tasks_blocked()
            assert server.draining
            assert not server.sessions[c.session_id].ended  # it waits for r1
            gate.opened.set()
            code, reason = await closed_with(c)
            assert (code, reason) == (CloseCode.SERVICE_RESTART, DRAIN_CLOSE_REASON)
            streams = only(c.received, "STREAM", "r1")
            assert [f["payload"]["seq"] for f in streams] == list(range(WORDS_BEFORE + WORDS_AFTER))
            assert c.received[-1]["msg_type"] == "DONE"  # the last frame before the close
            done = c.received[-1]["payload"]
            assert (done["status"], done["frames"]) == ("completed", WORDS_BEFORE + WORDS_AFTER)
            c.assert_guarantees()
        async with real_time_limit():
            await stopped.wait()
        assert trio.current_time() == 0  # it did not wait for drain_s


async def test_frames_still_queued_when_the_request_ends_are_written_before_the_1012(
    mock_clock,
):
    """A slow client: when the reply's last frame is queued, some of it has not been
    written yet. The drain closes the connection only after all of it and the DONE."""
    gate = Gate()
    config = ServerConfig(port=0, stream_lane_capacity=4, write_batch_frames=1)
    server = AgentServer(config, {"gate": gate})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        async with real_time_limit(), connect(server, "memory", lockstep=True) as c:
            await c.request("r1", agent="gate")
            await gate.waiting.wait()
            server.drain()
            gate.opened.set()
            while not gate.finished.is_set():  # each read lets the writer send one frame
                await c.recv()
            await trio.testing.wait_all_tasks_blocked()
            assert server.sessions[c.session_id].ended  # r1 is over: the drain has begun
            assert server.sessions[c.session_id].lanes.stream_depth > 0  # frames still queued
            assert (await closed_with(c))[0] == CloseCode.SERVICE_RESTART
            seqs = [f["payload"]["seq"] for f in only(c.received, "STREAM", "r1")]
            assert seqs == list(range(WORDS_BEFORE + WORDS_AFTER))
            assert c.received[-1]["msg_type"] == "DONE"
            c.assert_guarantees()
        nursery.cancel_scope.cancel()


async def test_at_drain_s_running_requests_get_done_shutdown_then_1012(mock_clock):
    gate = Gate()
    async with running_server({"gate": gate}) as (server, stopped):
        async with connect(server, "socket") as c:
            await c.request("r1", agent="gate")
            await gate.waiting.wait()
            server.drain()
            await trio.testing.wait_all_tasks_blocked()  # the drain has started: its clock runs
            mock_clock.jump(DRAIN_S - 0.5)
            await trio.testing.wait_all_tasks_blocked()
            assert not server.sessions[c.session_id].ended
            assert not stopped.is_set()
            mock_clock.jump(0.5)
            assert await closed_with(c) == (CloseCode.SERVICE_RESTART, DRAIN_CLOSE_REASON)
            done = c.received[-1]
            assert done["msg_type"] == "DONE"
            assert done["payload"]["status"] == "shutdown"
            assert done["payload"]["frames"] == WORDS_BEFORE
            assert len(only(c.received, "STREAM", "r1")) == WORDS_BEFORE
            c.assert_guarantees()
        async with real_time_limit():
            await stopped.wait()


async def test_readyz_and_new_handshakes_are_refused_with_503_while_draining(mock_clock):
    gate = Gate()
    async with running_server({"gate": gate}) as (server, _), connect(server, "socket") as c:
        assert (await fetch(server, "/readyz")).status == 200
        await c.request("r1", agent="gate")
        await gate.waiting.wait()
        server.drain()
        ready = await fetch(server, "/readyz")
        assert ready.status == 503
        assert "draining" in ready.text
        refused = await raw_handshake(server.port)
        assert refused.status == 503
        gate.opened.set()
        assert (await closed_with(c))[0] == CloseCode.SERVICE_RESTART


async def flood(request: AgentRequest, stream: ResponseStream) -> None:
    """Sends 64 KiB deltas until it is stopped: more than the kernel buffers hold."""
    while True:
        await stream.send("x" * 65_536)


async def test_the_server_returns_within_drain_s_plus_2_s_even_when_nobody_reads(autojump_clock):
    """A client that never reads cannot hold a draining node: at drain_s its request
    gets DONE{shutdown}, the flush is given up, and run returns within drain_s + 2 s."""
    settings = {"shutdown_grace_s": 60, "send_timeout_s": 0, "max_message_bytes": 2**20}
    async with running_server({"flood": flood}, **settings) as (server, stopped):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with open_wire_stream(stream, "/ws", max_message_size=2**20) as wire:
            await wire.request("r1", agent="flood")
            await wire.receive()  # the first STREAM frame: from now on nobody reads
            start = trio.current_time()
            server.drain()
            with trio.fail_after(DRAIN_S + 10):
                await stopped.wait()
            assert DRAIN_S <= trio.current_time() - start <= DRAIN_S + 2


async def test_without_drain_a_shutdown_still_closes_with_1001(mock_clock):
    async with running_server({}) as (server, _), connect(server, "socket") as c:
        server.shutdown()
        assert (await closed_with(c))[0] == CloseCode.GOING_AWAY
        assert not server.draining


@pytest.mark.parametrize("order", ["drain then shutdown", "shutdown then drain"])
async def test_the_first_of_drain_and_shutdown_wins(mock_clock, order):
    async with running_server({}) as (server, _), connect(server, "socket") as c:
        first, second = (
            (server.drain, server.shutdown)
            if order == "drain then shutdown"
            else (server.shutdown, server.drain)
        )
        first()
        second()
        expected = CloseCode.SERVICE_RESTART if first == server.drain else CloseCode.GOING_AWAY
        assert (await closed_with(c))[0] == expected


async def test_a_session_waiting_for_a_resume_ends_at_once(mock_clock):
    """Its connection dropped mid-reply: nobody can resume it on a draining node (the
    handshake is refused), so it does not hold the node until drain_s."""
    gate = Gate()
    async with running_server({"gate": gate}) as (server, stopped):
        async with connect(server, "socket") as c:
            await c.request("r1", agent="gate")
            await gate.waiting.wait()
            await trio.aclose_forcefully(c.stream)  # no close frame: resumable
        await trio.testing.wait_all_tasks_blocked()
        assert server.sessions[c.session_id].connection is None  # detached, r1 still runs
        server.drain()
        async with real_time_limit():
            await stopped.wait()
        assert trio.current_time() == 0
