"""The stream lane serves the requests of a connection in turn."""

from __future__ import annotations

import pytest
import trio

from trio_agent import agents as builtin
from trio_agent.protocol.constants import FrameKind
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.registry import RequestRecord
from trio_agent.testing.wire import connect, only


def record(rid: str) -> RequestRecord:
    return RequestRecord(request_id=rid, agent="a", scope=trio.CancelScope())


async def fill(lanes: OutboundLanes, rec: RequestRecord, *texts: str) -> None:
    for text in texts:
        await lanes.wait_for_stream_room()
        lanes.push_stream(Outbound(FrameKind.STREAM, text, rec))


async def drain(lanes: OutboundLanes) -> list[str | None]:
    out = []
    while lanes.queued:
        out.append((await lanes.next_frame()).data)
        lanes.frame_written()
    return out


async def test_a_new_request_is_not_queued_behind_another_ones_backlog():
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    old, new = record("old"), record("new")
    await fill(lanes, old, "o0", "o1", "o2", "o3")
    await fill(lanes, new, "n0", "n1")
    lanes.push_stream_terminal(Outbound(FrameKind.DONE, "n-done", new))
    # In turn; each request's own frames, and its DONE after them, in order.
    assert await drain(lanes) == ["o0", "n0", "o1", "n1", "o2", "n-done", "o3"]


async def test_a_request_with_nothing_queued_always_has_room_for_one_frame(autojump_clock):
    lanes = OutboundLanes(stream_capacity=2, priority_capacity=8)
    busy, quiet = record("busy"), record("quiet")
    await fill(lanes, busy, "b0", "b1")  # the lane is full of busy's frames
    with trio.move_on_after(1) as waited:
        await lanes.wait_for_stream_room(busy)
    assert waited.cancelled_caught  # busy waits: backpressure
    await lanes.wait_for_stream_room(quiet)  # quiet does not
    lanes.push_stream(Outbound(FrameKind.STREAM, "q0", quiet))
    with trio.move_on_after(1) as waited:
        await lanes.wait_for_stream_room(quiet)
    assert waited.cancelled_caught  # one frame, not more
    assert await drain(lanes) == ["b0", "q0", "b1"]


async def test_fifo_mode_keeps_arrival_order_across_requests():
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8, fifo=True)
    old, new = record("old"), record("new")
    await fill(lanes, old, "o0", "o1")
    await fill(lanes, new, "n0")
    lanes.push_priority(Outbound(FrameKind.CONTROL, "ack"))
    assert await drain(lanes) == ["o0", "o1", "n0", "ack"]


@pytest.mark.parametrize("batch", [1, 8])
async def test_turnaround_after_an_interrupt_does_not_wait_for_the_other_stream(
    start_server, autojump_clock, batch
):
    """A streams as fast as it can and fills the lane; B (slow) is cut and C is sent
    at once: C's frames arrive while A's backlog is still being sent."""
    server = await start_server(
        {"lorem": builtin.lorem}, stream_lane_capacity=16, write_batch_frames=batch
    )
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("a", words=10_000, words_per_s=0)
        await c.request("b", words=10_000, words_per_s=1)
        await c.recv_until(lambda f: f["msg_type"] == "STREAM" and f["request_id"] == "b")
        await trio.testing.wait_all_tasks_blocked()
        assert server.sessions[c.session_id].lanes.stream_depth == 16
        ack = await c.interrupt("b")
        await c.request("c", words=3, words_per_s=0)
        await c.until_ack(ack)
        frames = await c.until_done("c")
        # Without turns, C's first frame would come after the 16 frames of A queued
        # ahead of it, and more.
        assert len(only(frames, "STREAM", "a")) < 16
        await c.interrupt("a")
        await c.until_done("a")
        c.assert_guarantees()
