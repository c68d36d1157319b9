"""OutboundLanes: priority first, bounded stream lane, discard, no polling."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_agent.protocol.constants import FrameKind
from trio_agent.server.lanes import LaneOverflow, Outbound, OutboundLanes
from trio_agent.server.registry import RequestRecord


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
        out.append(frame.data)
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
        assert frame.data == "x"
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


# --------------------------------------------------------------------------- AUDIO, budgeted in ms


def audio_frame(rec: RequestRecord, name: str, ms: float = 20.0) -> Outbound:
    return Outbound(FrameKind.AUDIO, name.encode(), rec, samples=int(ms * 16), audio_ms=ms)


async def put_audio(lanes: OutboundLanes, frame: Outbound) -> None:
    await lanes.wait_for_audio_room(frame.audio_ms)
    lanes.push_stream(frame)


async def test_audio_waits_for_room_in_milliseconds_not_frames(nursery):
    lanes = OutboundLanes(stream_capacity=1, priority_capacity=8, audio_budget_ms=60)
    rec = record()
    pushed: list[str] = []

    async def speaker() -> None:
        for i in range(6):
            await put_audio(lanes, audio_frame(rec, f"a{i}"))
            pushed.append(f"a{i}")

    nursery.start_soon(speaker)
    await trio.testing.wait_all_tasks_blocked()
    # Three 20 ms chunks fill 60 ms; a text frame's capacity of 1 does not apply to them.
    assert pushed == ["a0", "a1", "a2"]
    assert lanes.audio_queued_ms == 60.0
    assert lanes.stream_depth == 0
    # A text frame still has its own room.
    await put(lanes, stream_frame(rec, "word"))
    assert await drain(lanes, 1) == [b"a0"]
    await trio.testing.wait_all_tasks_blocked()
    assert pushed == ["a0", "a1", "a2", "a3"]
    assert lanes.audio_queued_ms == 60.0


async def test_discard_drops_audio_and_frees_its_milliseconds(nursery):
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8, audio_budget_ms=40)
    cut, other = record("cut"), record("other")
    await put(lanes, stream_frame(cut, "w0"))
    await put_audio(lanes, audio_frame(cut, "a0"))
    await put_audio(lanes, audio_frame(cut, "a1"))
    waiting = trio.Event()

    async def other_speaker() -> None:
        await put_audio(lanes, audio_frame(other, "b0"))
        waiting.set()

    nursery.start_soon(other_speaker)
    await trio.testing.wait_all_tasks_blocked()
    assert not waiting.is_set()  # the budget is full
    lanes.push_stream_terminal(Outbound(FrameKind.DONE, "done", cut))
    assert lanes.discard(cut) == 3  # w0, a0, a1; the DONE stays
    await trio.testing.wait_all_tasks_blocked()
    assert waiting.is_set()
    assert lanes.audio_queued_ms == 20.0
    assert sorted(await drain(lanes, 2), key=str) == [b"b0", "done"]
    assert lanes.audio_queued_ms == 0.0


async def test_a_chunk_longer_than_the_budget_still_goes_into_an_empty_lane():
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8, audio_budget_ms=10)
    rec = record()
    with trio.fail_after(1):
        await put_audio(lanes, audio_frame(rec, "long", ms=50))
    assert lanes.audio_queued_ms == 50.0


async def test_fractional_chunks_leave_no_rounding_behind():
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8, audio_budget_ms=1)
    rec = record()
    for _ in range(3):
        await put_audio(lanes, audio_frame(rec, "x", ms=1000 / 22050 * 7))
        await drain(lanes, 1)
    assert lanes.audio_queued_ms == 0.0
