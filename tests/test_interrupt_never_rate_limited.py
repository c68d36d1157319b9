"""An INTERRUPT is always acted on: the rate limit never refuses a stop (docs/security.md).

It only removes work, so acting on it can never help a flood; it still counts
toward flood detection, and a session that floods is closed with 1008, which
cancels everything it ran.
"""

from __future__ import annotations

import trio
from testing_agents import endless
from trio_websocket import ConnectionClosed

from trio_agent import agents as builtin
from trio_agent.testing.wire import connect, only


async def test_an_interrupt_after_a_heartbeat_burst_is_acknowledged_and_stops_the_reply(
    start_server,
):
    # A rate so slow that no token comes back while the test runs.
    server = await start_server(
        {"lorem": builtin.lorem, "endless": endless()},
        rate_limit_per_s=0.001,
        rate_limit_burst=4,
        rate_limit_close_after=50,
    )
    async with connect(server, "socket") as c:
        await c.request("r1", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        for _ in range(10):
            await c.heartbeat()
        with trio.fail_after(5):
            await c.recv_until(
                lambda f: f["msg_type"] == "ERROR" and f["payload"]["code"] == "RATE_LIMITED"
            )
            interrupt = await c.interrupt("r1", reason="stop")
            frames = await c.until_done("r1")
        ack_at = next(
            i
            for i, f in enumerate(frames)
            if f["msg_type"] == "INTERRUPT_ACK" and f["ref"] == interrupt
        )
        assert frames[ack_at]["payload"]["interrupted"] == ["r1"]
        after_ack = frames[ack_at + 1 :]
        assert not [f for f in after_ack if f["msg_type"] == "STREAM"]
        done = frames[-1]
        assert done["payload"]["interrupted"] is True
        assert done["payload"]["status"] == "interrupted"
        assert not [e for e in only(c.received, "ERROR") if e.get("ref") == interrupt], (
            "the INTERRUPT was refused"
        )
        c.assert_guarantees()


async def test_interrupts_still_count_toward_flood_detection(start_server, autojump_clock):
    """A flood of INTERRUPTs is acted on frame by frame, and still closed with 1008."""
    server = await start_server(
        {"lorem": builtin.lorem, "endless": endless()},
        rate_limit_per_s=10,
        rate_limit_burst=4,
        rate_limit_close_after=3,
    )
    async with connect(server) as c:
        await c.request("r1", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        for _ in range(20):
            try:
                await c.interrupt()
            except ConnectionClosed:
                break
        assert await c.until_closed() == 1008
        assert not [e for e in only(c.received, "ERROR") if e["payload"]["code"] == "RATE_LIMITED"]
        done = [f for f in c.received if f["msg_type"] == "DONE"]
        assert len(done) == 1
        assert done[0]["payload"]["interrupted"] is True
        with trio.fail_after(5):
            await server.wait_idle()
