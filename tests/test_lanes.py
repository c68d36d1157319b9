"""OutboundLanes: priority first, bounded stream lane, discard, no polling."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_agent.lanes import FrameKind, LaneOverflow, Outbound, OutboundLanes
from trio_agent.registry import RequestRecord


def record(rid: str = "r") -> RequestRecord:
    return RequestRecord(request_id=rid, agent="a", scope=trio.CancelScope())


def stream_frame(rec: RequestRecord, text: str) -> Outbound:
    return Outbound(FrameKind.STREAM, text, rec)


async def put(lanes: OutboundLanes, frame: Outbound) -> None:
    await lanes.wait_for_stream_room()
    lanes.push_stream(frame)


async def drain(lanes: OutboundLanes, n: int) -> list[str | None]:
    out = []
    for _ in range(n):
        frame = await lanes.next_frame()
        lanes.frame_written()
        out.append(frame.text)
    return out


async def test_priority_lane_always_goes_first():
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    rec = record()
    for i in range(3):
        await put(lanes, stream_frame(rec, f"s{i}"))
    lanes.push_priority(Outbound(FrameKind.CONTROL, "ack"))
    assert await drain(lanes, 4) == ["ack", "s0", "s1", "s2"]


async def test_stream_lane_blocks_when_full_until_the_writer_takes_a_frame():
    lanes = OutboundLanes(stream_capacity=2, priority_capacity=8)
    rec = record()
    sent = []

    async def producer() -> None:
        for i in range(3):
            await put(lanes, stream_frame(rec, f"s{i}"))
            sent.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [0, 1]  # the third send waits: backpressure
        assert lanes.stream_depth == 2
        assert await drain(lanes, 1) == ["s0"]
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [0, 1, 2]


async def test_waiting_for_room_is_a_cancellation_point_even_with_room():
    lanes = OutboundLanes(stream_capacity=2, priority_capacity=8)
    with trio.CancelScope() as scope:
        scope.cancel()
        await lanes.wait_for_stream_room()
        pytest.fail("not cancelled")  # pragma: no cover


async def test_discard_drops_only_that_requests_stream_frames_and_frees_room():
    lanes = OutboundLanes(stream_capacity=3, priority_capacity=8)
    a, b = record("a"), record("b")
    await put(lanes, stream_frame(a, "a0"))
    await put(lanes, stream_frame(b, "b0"))
    await put(lanes, stream_frame(a, "a1"))
    lanes.push_stream_terminal(Outbound(FrameKind.DONE, "doneA", a))
    assert lanes.discard(a) == 2
    assert lanes.stream_depth == 1
    await put(lanes, stream_frame(b, "b1"))  # room again, no wait
    # Requests take turns (a first: it queued first); a's DONE kept its place.
    assert await drain(lanes, 3) == ["doneA", "b0", "b1"]


async def test_terminal_frames_do_not_wait_for_room():
    lanes = OutboundLanes(stream_capacity=1, priority_capacity=8)
    rec = record()
    await put(lanes, stream_frame(rec, "s0"))
    lanes.push_stream_terminal(Outbound(FrameKind.DONE, "done", rec))
    assert await drain(lanes, 2) == ["s0", "done"]


def test_priority_lane_is_bounded():
    lanes = OutboundLanes(stream_capacity=1, priority_capacity=2)
    lanes.push_priority(Outbound(FrameKind.CONTROL, "1"))
    lanes.push_priority(Outbound(FrameKind.CONTROL, "2"))
    with pytest.raises(LaneOverflow):
        lanes.push_priority(Outbound(FrameKind.CONTROL, "3"))


async def test_fifo_mode_keeps_order_and_discards_nothing():
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8, fifo=True)
    rec = record()
    await put(lanes, stream_frame(rec, "s0"))
    lanes.push_priority(Outbound(FrameKind.CONTROL, "ack"))
    assert lanes.discard(rec) == 0
    assert await drain(lanes, 2) == ["s0", "ack"]


async def test_wait_written_returns_once_the_writer_is_idle():
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    lanes.push_priority(Outbound(FrameKind.CONTROL, "x"))
    flushed = trio.Event()

    async def flusher() -> None:
        await lanes.wait_written()
        flushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher)
        await trio.testing.wait_all_tasks_blocked()
        assert not flushed.is_set()
        frame = await lanes.next_frame()
        await trio.testing.wait_all_tasks_blocked()
        assert frame.text == "x"
        assert not flushed.is_set()  # taken but not yet written
        lanes.frame_written()
        await trio.testing.wait_all_tasks_blocked()
        assert flushed.is_set()


async def test_a_waiter_given_room_and_cancelled_in_the_same_tick_gets_cancelled(nursery):
    """The writer makes room (waking the agent) and an INTERRUPT cancels the agent's
    scope before the agent runs again: the agent must see Cancelled, not go on to
    push a frame for a request that has already ended."""
    lanes = OutboundLanes(stream_capacity=1, priority_capacity=4)
    rec = record()
    await put(lanes, stream_frame(rec, "s0"))
    scope = trio.CancelScope()
    got_room = []

    async def agent() -> None:
        with scope:
            await lanes.wait_for_stream_room()
            got_room.append(True)

    nursery.start_soon(agent)
    await trio.testing.wait_all_tasks_blocked()
    await lanes.next_frame()  # room for one more: the agent is rescheduled...
    scope.cancel()  # ...and cut before it runs
    await trio.testing.wait_all_tasks_blocked()
    assert got_room == []
    assert scope.cancelled_caught
