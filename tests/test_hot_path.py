"""The writer's hot path: what leaves in one write, and what the metrics count per batch.

``docs/performance.md`` (tuning the hot path) measures what these save.
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

from trio_agent.observability import NO_TRACE
from trio_agent.observability.events import session_events
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.framing import websocket_frame
from trio_agent.server.cork import CorkableStream
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.registry import RequestPhase, RequestRegistry
from trio_agent.server.request_stream import RequestStream, schedule_points
from trio_agent.server.session_end import SessionEnd
from trio_agent.server.writer import Writer


class Recording(trio.abc.Stream):
    """An inner stream that records every send_all call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class OpenSocket:
    """The writer's view of a connection that is open (it frames the messages itself)."""

    closed = None

    async def send_message(self, message: str | bytes) -> None:
        raise AssertionError("a corked writer frames its messages itself")


class CountingMetrics:
    """Records what the session tells the metrics about written frames."""

    def __init__(self) -> None:
        self.told: list[tuple[FrameKind, int, int]] = []

    def frames_written(self, kind: FrameKind, count: int, size: int) -> None:
        self.told.append((kind, count, size))

    def request_ended(self, record: object) -> None:
        pass

    def interrupt_processed(self, *, cut: int, discarded: int) -> None:
        pass

    def interrupt_acknowledged(self, latency_s: float) -> None:
        pass

    def error_sent(self, code: object) -> None:
        pass


def _writer(lanes: OutboundLanes, inner: Recording) -> Writer:
    ends: list[SessionEnd] = []
    return Writer(
        OpenSocket(),
        session_id="s",
        lanes=lanes,
        registry=RequestRegistry(max_running=4),
        msg_ids=MessageIds(),
        events=session_events(NO_TRACE.session("s"), CountingMetrics()),
        batch_frames=32,
        cork=CorkableStream(inner),
        end_session=ends.append,
    )


async def test_control_frames_queued_together_leave_in_one_write():
    """An ACK ends its batch only when nothing else is queued: the frames behind it
    (the cut request's DONE, in a real session) go in the same write, not one flush later."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    inner = Recording()
    ack, error = '{"msg_type":"INTERRUPT_ACK"}', '{"msg_type":"ERROR"}'
    lanes.push_priority(Outbound(FrameKind.CONTROL, ack))
    lanes.push_priority(Outbound(FrameKind.CONTROL, error))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_writer(lanes, inner).run)
        await trio.testing.wait_all_tasks_blocked()
        assert inner.writes == [websocket_frame(ack) + websocket_frame(error)]
        # Alone in the lanes, a control frame is flushed at once (nothing is held back).
        lanes.push_priority(Outbound(FrameKind.CONTROL, ack))
        await trio.testing.wait_all_tasks_blocked()
        assert inner.writes[1:] == [websocket_frame(ack)]
        nursery.cancel_scope.cancel()


async def test_metrics_are_told_once_per_kind_and_batch_with_exact_bytes():
    metrics = CountingMetrics()
    events = session_events(NO_TRACE.session("s"), metrics)
    batch = [
        (Outbound(FrameKind.CONTROL, "é"), "é"),  # 2 bytes in UTF-8
        (Outbound(FrameKind.CONTROL, "ab"), "ab"),
        (Outbound(FrameKind.AUDIO, b"\x00" * 6), b"\x00" * 6),
    ]
    events.batch_written(batch)
    assert sorted(metrics.told, key=lambda t: t[0].value) == [
        (FrameKind.AUDIO, 1, 6),
        (FrameKind.CONTROL, 2, 4),
    ]


def _request_stream(lanes: OutboundLanes, scope: trio.CancelScope) -> RequestStream:
    record = RequestRegistry(max_running=4).admit("r1", agent="lorem", scope=scope)
    return RequestStream(
        record,
        session_id="s",
        lanes=lanes,
        msg_ids=MessageIds(),
        events=session_events(NO_TRACE.session("s"), CountingMetrics()),
    )


async def test_a_replys_first_send_queues_without_a_schedule_point_and_later_ones_yield():
    """The first words reach the lane in the request task's first step (one scheduler
    pass sooner); a later send straight after a send is a full checkpoint (fairness,
    interrupt point)."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    stream = _request_stream(lanes, trio.CancelScope())
    others_ran: list[bool] = []

    async def another_task() -> None:
        others_ran.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(another_task)  # runs at this task's first schedule point
        await stream.send("first")
        assert lanes.stream_depth == 1
        assert not others_ran  # no other task had a turn: not a schedule point
        with trio.testing.assert_checkpoints():
            await stream.send(" second")
        assert lanes.stream_depth == 2


@pytest.mark.parametrize("sent_before", [0, 1])
async def test_a_send_of_a_cut_request_raises_cancelled_even_without_a_schedule_point(
    sent_before: int,
):
    """A reply's first send, and a send after a wait: neither is a schedule point, and
    both still deliver a pending cancellation."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    with trio.CancelScope() as scope:
        stream = _request_stream(lanes, scope)
        for _ in range(sent_before):
            await stream.send("first")
            await trio.lowlevel.checkpoint()  # the agent waits for its next token
        scope.cancel()
        await stream.send(" next")
        raise AssertionError("the send should have raised Cancelled")
    assert scope.cancelled_caught
    assert lanes.stream_depth == sent_before


async def test_a_send_after_its_task_yielded_is_not_a_schedule_point_again():
    """An agent that awaited something between two sends (its upstream, a pacing timer)
    has let the other tasks run: that send queues in the same step. A send straight
    after it yields again, so a loop of sends still gives every task a turn per delta."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    stream = _request_stream(lanes, trio.CancelScope())
    task = trio.lowlevel.current_task()
    await stream.send("first")
    await trio.lowlevel.checkpoint()  # the agent waits for its next token
    before = schedule_points(task)
    await stream.send(" second")
    assert schedule_points(task) == before  # queued in this step: no schedule point
    assert lanes.stream_depth == 2
    with trio.testing.assert_checkpoints():
        await stream.send(" third")  # nothing awaited since the last send
    assert lanes.stream_depth == 3


async def test_a_send_by_another_task_than_the_last_sender_is_a_full_checkpoint():
    """The count is per task: a send from a task that has not sent before on this
    stream (a helper task of the agent) yields as the first send after a send does."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    stream = _request_stream(lanes, trio.CancelScope())
    await stream.send("first")

    async def helper() -> None:
        with trio.testing.assert_checkpoints():
            await stream.send(" from a helper")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(helper)
    assert lanes.stream_depth == 2


async def test_trio_still_counts_each_tasks_schedule_points():
    """What the check above reads (a private count of Trio's): without it every send
    would be a full checkpoint again, correct but one scheduler pass slower per frame."""
    task = trio.lowlevel.current_task()
    before = schedule_points(task)
    assert before >= 0
    await trio.lowlevel.checkpoint_if_cancelled()  # a cancellation point only
    assert schedule_points(task) == before
    await trio.lowlevel.checkpoint()
    assert schedule_points(task) == before + 1


async def test_a_send_straight_after_a_send_is_marked_flowing_for_the_writer_to_batch():
    """The writer batches a reply in full flow and lets a frame sent after a wait go
    straight to the socket (``Outbound.flowing``, read in ``Writer._write_directly``)."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    pushed: list[Outbound] = []
    push = lanes.push_stream

    def spy(frame: Outbound) -> None:
        pushed.append(frame)
        push(frame)

    lanes.push_stream = spy  # type: ignore[method-assign]
    stream = _request_stream(lanes, trio.CancelScope())
    await stream.send("first")
    await stream.send(" second")  # straight after: in full flow
    await trio.lowlevel.checkpoint()  # a wait (the upstream's next token)
    await stream.send(" third")
    await stream.send(" fourth")
    assert [frame.flowing for frame in pushed] == [False, True, False, True]


async def test_every_send_of_a_loop_of_sends_is_a_schedule_point():
    """Three sends in a row with nothing awaited between them: each one yields."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    stream = _request_stream(lanes, trio.CancelScope())
    await stream.send("first")
    for delta in (" a", " b", " c"):
        with trio.testing.assert_checkpoints():
            await stream.send(delta)


async def test_a_loop_of_failing_sends_still_yields_on_each():
    """An agent that keeps sending after its request ended (from a shielded block,
    catching the error) must not spin without a schedule point."""
    lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
    stream = _request_stream(lanes, trio.CancelScope())
    await stream.send("first")
    stream.record.phase = RequestPhase.ENDED
    for _ in range(3):
        with trio.testing.assert_checkpoints(), contextlib.suppress(trio.ClosedResourceError):
            await stream.send(" late")
    assert lanes.stream_depth == 1
