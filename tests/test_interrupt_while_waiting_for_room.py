"""An agent waiting for stream-lane room when its request is cut sees ``Cancelled``.

Regression test: the INTERRUPT used to drop the request's queued frames before
cancelling its scope. Dropping them makes room and wakes the waiting agent, so
the agent resumed normally, found its request ended and got
``trio.ClosedResourceError``, which the session logged as an agent failure with
a traceback, on every interrupt under backpressure.
"""

from __future__ import annotations

import trio
import trio.testing
from testing_agents import Probe, endless

from trio_agent.protocol.messages import InterruptMessage
from trio_agent.testing.wire import connect


async def test_agent_blocked_on_backpressure_is_cancelled_not_failed(start_server, autojump_clock):
    probe = Probe()
    server = await start_server({"flood": endless(probe, interval=0)}, stream_lane_capacity=2)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r", agent="flood")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        await trio.testing.wait_all_tasks_blocked()
        assert server.sessions[c.session_id].lanes.stream_depth == 2  # the agent waits for room
        ack = await c.interrupt("r")
        await c.until_ack(ack)
        done = (await c.until_done("r"))[-1]
        assert done["payload"]["status"] == "interrupted"
        assert probe.cancelled == ["r"]
        c.assert_guarantees()
        c.assert_guarantees()


async def test_agent_already_woken_for_room_is_cancelled_not_failed(start_server, autojump_clock):
    """The writer takes a frame (waking the agent to take the room) and the INTERRUPT
    is read before the agent runs: the agent must still see Cancelled."""
    probe = Probe()
    server = await start_server({"flood": endless(probe, interval=0)}, stream_lane_capacity=2)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r", agent="flood")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        await trio.testing.wait_all_tasks_blocked()
        session = server.sessions[c.session_id]
        # Free one slot by hand, as the writer does, so the agent is runnable but
        # has not run yet; then cut the request before it does.
        session.lanes._room.unpark()
        c.checker.sent({"msg_type": "INTERRUPT", "msg_id": "cut", "request_id": "r"})
        session._interrupt(
            InterruptMessage(msg_id="cut", request_id="r"), read_at=trio.current_time()
        )
        await c.until_ack("cut")
        done = await c.until_done("r")
        assert done[-1]["payload"]["status"] == "interrupted"
        assert probe.cancelled == ["r"]
        c.assert_guarantees()
