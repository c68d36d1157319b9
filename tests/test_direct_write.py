"""A frame pushed into empty lanes while the writer sleeps goes to the socket from
the task that pushed it (``Writer._write_directly``): one write, in order, counted once.

``docs/architecture.md`` ("Who writes on the socket") states the rule these check;
``docs/performance.md`` (tuning the hot path) measures what it saves.
"""

from __future__ import annotations

import json
import socket

import pytest
import trio
import trio.testing

from trio_agent.observability import NO_TRACE
from trio_agent.observability.events import session_events
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.framing import websocket_frame
from trio_agent.protocol.messages import DoneStatus
from trio_agent.server.cork import CorkableStream
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.registry import RequestRegistry
from trio_agent.server.request_stream import RequestStream
from trio_agent.server.session_end import SessionEnd
from trio_agent.server.transport import GuardedStream
from trio_agent.server.writer import COMPANY_WINDOW_S, Writer
from trio_agent.speech.timeline import SpeechTimeline
from trio_agent.testing.wire import connect

ACK = '{"msg_type":"INTERRUPT_ACK"}'
PONG = '{"msg_type":"HEARTBEAT"}'


class PartialSocket(trio.abc.Stream):
    """An inner stream whose non-blocking ``send_now`` takes at most ``room`` bytes.

    Everything that reaches it, by either path, lands in ``wire`` in order;
    ``writes`` records each call and the path it came by.
    """

    def __init__(self, room: int | None = None) -> None:
        self.room = room
        self.wire = bytearray()
        self.writes: list[tuple[str, bytes]] = []
        self.broken = False

    def send_now(self, data: memoryview) -> int:
        if self.broken:
            raise trio.BrokenResourceError("socket connection broken")
        taken = bytes(data if self.room is None else data[: self.room])
        if taken:
            self.wire += taken
            self.writes.append(("now", taken))
        return len(taken)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.broken:
            raise trio.BrokenResourceError("an earlier write did not complete")
        self.wire += data
        self.writes.append(("all", bytes(data)))

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


class NoMetrics:
    """The session's metrics, told nothing here."""

    def frames_written(self, kind: FrameKind, count: int, size: int) -> None:
        pass

    def request_ended(self, record: object) -> None:
        pass

    def interrupt_processed(self, *, cut: int, discarded: int) -> None:
        pass

    def interrupt_acknowledged(self, latency_s: float) -> None:
        pass

    def error_sent(self, code: object) -> None:
        pass


class Session:
    """A writer over ``inner`` with its lanes, registry and what it reports."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.lanes = OutboundLanes(stream_capacity=8, priority_capacity=8)
        self.registry = RequestRegistry(max_running=4)
        self.ends: list[SessionEnd] = []
        self.replayed: list[tuple[FrameKind, int]] = []
        self.msg_ids = MessageIds()
        self.events = session_events(NO_TRACE.session("s"), NoMetrics())
        self.writer = Writer(
            OpenSocket(),
            session_id="s",
            lanes=self.lanes,
            registry=self.registry,
            msg_ids=self.msg_ids,
            events=self.events,
            batch_frames=32,
            cork=CorkableStream(inner),
            end_session=self.ends.append,
            on_written=lambda frame, text: self.replayed.append((frame.kind, frame.seq)),
        )

    def stream(self, request_id: str = "r1") -> RequestStream:
        record = self.registry.admit(request_id, agent="lorem", scope=trio.CancelScope())
        return RequestStream(
            record, session_id="s", lanes=self.lanes, msg_ids=self.msg_ids, events=self.events
        )

    def push_control(self, text: str) -> None:
        self.lanes.push_priority(Outbound(FrameKind.CONTROL, text))


def frames(*texts: str) -> bytes:
    return b"".join(websocket_frame(text) for text in texts)


def texts_on(wire: bytes | bytearray) -> list[str]:
    """The text messages of unmasked, unfragmented server frames, in order."""
    out: list[str] = []
    at = 0
    while at < len(wire):
        length, at = wire[at + 1] & 0x7F, at + 2
        if length == 126:
            length, at = int.from_bytes(wire[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(wire[at : at + 8], "big"), at + 8
        out.append(bytes(wire[at : at + length]).decode())
        at += length
    return out


async def test_a_frame_into_empty_lanes_is_written_by_the_pushing_task_at_once():
    inner = PartialSocket()
    session = Session(inner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        # No schedule point between the push and the bytes on the socket: the
        # producer's own step wrote them, in one write, and nothing was queued.
        with trio.testing.assert_no_checkpoints():
            session.push_control(ACK)
        assert inner.writes == [("now", websocket_frame(ACK))]
        assert session.lanes.queued == 0
        stream = session.stream()
        await stream.send("one")
        await trio.testing.wait_all_tasks_blocked()
        assert [path for path, _ in inner.writes] == ["now", "now"]
        assert stream.record.frames_written == 1
        nursery.cancel_scope.cancel()


async def test_a_cancelled_producer_still_writes_the_whole_frame():
    """The push is not a schedule point: a cancelled scope cannot cut it halfway."""
    inner = PartialSocket()
    session = Session(inner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            session.push_control(ACK)
        assert bytes(inner.wire) == websocket_frame(ACK)
        nursery.cancel_scope.cancel()


def stream_frame(stream: RequestStream, delta: str, *, flowing: bool = False) -> Outbound:
    """A STREAM frame of ``stream``'s request, as ``stream.send`` queues it
    (``flowing``: sent straight after the previous send, with no wait between)."""
    record = stream.record
    seq = record.frames_queued
    record.frames_queued += 1
    text = json.dumps({"msg_type": "STREAM", "seq": seq, "payload": {"delta": delta}})
    return Outbound(FrameKind.STREAM, text, record, seq=seq, flowing=flowing)


def audio_frame(stream: RequestStream, samples: bytes) -> Outbound:
    """An AUDIO chunk of ``stream``'s request (its bytes stand for the encoded chunk)."""
    record = stream.record
    if record.speech is None:
        record.speech = SpeechTimeline(sample_rate=16_000)
    return Outbound(FrameKind.AUDIO, samples, record, samples=len(samples) // 2)


async def test_what_the_kernel_does_not_take_goes_first_then_priority_then_stream():
    """A partial direct write keeps the rest under the cork; frames pushed meanwhile
    queue behind it (nothing else goes directly), and the priority lane still goes
    before the stream lane."""
    inner = PartialSocket(room=3)
    session = Session(inner)
    stream = session.stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        first = stream_frame(stream, "first words")
        session.lanes.push_stream(first)
        assert inner.wire == websocket_frame(first.data or "")[:3]
        # Pushed before the writer has flushed the rest: queued, not written.
        inner.room = None
        session.lanes.push_stream(stream_frame(stream, "second"))
        session.push_control(ACK)
        assert session.lanes.queued == 2
        assert len(inner.writes) == 1
        await trio.testing.wait_all_tasks_blocked()
        got = [json.loads(text) for text in texts_on(inner.wire)]
        assert [message["msg_type"] for message in got] == ["STREAM", "INTERRUPT_ACK", "STREAM"]
        assert [got[0]["payload"]["delta"], got[2]["payload"]["delta"]] == ["first words", "second"]
        # The rest, the ACK and the second frame left in one flush.
        assert [path for path, _ in inner.writes] == ["now", "all"]
        # Counted once each, in wire order.
        assert stream.record.frames_written == 2
        assert session.replayed == [
            (FrameKind.STREAM, 0),
            (FrameKind.CONTROL, -1),
            (FrameKind.STREAM, 1),
        ]
        assert session.lanes.queued == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("room", [0, 1, 7])
async def test_a_partial_direct_write_loses_nothing_and_counts_once(room: int):
    """Whatever the kernel takes, every frame reaches the wire once, whole, in push
    order, the replay buffer is told each frame once, and the DONE counts them."""
    inner = PartialSocket(room=room)
    session = Session(inner)
    stream = session.stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        for word in ("alpha", "beta", "gamma"):
            await stream.send(word)
            await trio.testing.wait_all_tasks_blocked()
        record = stream.record
        session.registry.end(record, DoneStatus.COMPLETED, reason=None)
        session.lanes.push_stream_terminal(Outbound(FrameKind.DONE, record=record))
        await trio.testing.wait_all_tasks_blocked()
        await session.lanes.wait_written()
        nursery.cancel_scope.cancel()
    got = [json.loads(text) for text in texts_on(inner.wire)]
    assert [message["msg_type"] for message in got] == ["STREAM"] * 3 + ["DONE"]
    assert [message["payload"]["delta"] for message in got[:3]] == ["alpha", "beta", "gamma"]
    assert got[3]["payload"]["frames"] == 3
    assert record.frames_written == 3
    assert session.replayed == [(FrameKind.STREAM, seq) for seq in range(3)] + [
        (FrameKind.DONE, -1)
    ]
    assert not session.registry.get(record.request_id)  # its id freed once, on the wire
    assert session.ends == []


async def test_a_direct_write_on_a_broken_socket_ends_the_session_in_the_writer():
    """The producer sees no error; the writer, woken to flush, ends the session as a
    lost connection (resumable), with the frame counted for the replay."""
    inner = PartialSocket()
    inner.broken = True
    session = Session(inner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        session.push_control(ACK)  # does not raise
        await trio.testing.wait_all_tasks_blocked()
        assert [end.resumable for end in session.ends] == [True]
        assert session.replayed == [(FrameKind.CONTROL, -1)]
        nursery.cancel_scope.cancel()


async def test_nothing_goes_directly_while_the_writer_is_busy_or_a_send_holds_the_cork():
    inner = PartialSocket()
    session = Session(inner)
    cork = session.writer._cork
    assert cork is not None
    async with trio.open_nursery() as nursery:
        # No writer parked yet: queued.
        session.push_control(PONG)
        assert session.lanes.queued == 1
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        assert session.lanes.queued == 0
        async with cork._send_lock:  # trio-websocket sending a pong, say
            session.push_control(ACK)
            assert session.lanes.queued == 1
        # The lock is free and the writer has not run yet: the ACK waiting in the
        # priority lane keeps a reply's first words off the direct path.
        session.lanes.push_stream(stream_frame(session.stream(), "words"))
        assert session.lanes.queued == 2
        await trio.testing.wait_all_tasks_blocked()
        assert texts_on(inner.wire)[:2] == [PONG, ACK]
        assert json.loads(texts_on(inner.wire)[2])["payload"]["delta"] == "words"
        nursery.cancel_scope.cancel()


async def test_direct_writes_over_a_real_socket_with_a_tiny_buffer_arrive_whole_and_in_order():
    """A socketpair whose send buffer is much smaller than the frames: the kernel
    takes part of a direct write and the writer flushes the rest as the peer reads."""
    left, right = trio.socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    guarded = GuardedStream(trio.SocketStream(left), send_timeout_s=None)
    peer = trio.SocketStream(right)
    session = Session(guarded)
    stream = session.stream()
    words = [f"{n:04d}" + "x" * 30_000 for n in range(12)]
    received = bytearray()
    all_read = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)

        async def read_all() -> None:
            while len(texts_on_complete(received)) < len(words) + 1:
                received.extend(await peer.receive_some(65536))
            all_read.set()

        nursery.start_soon(read_all)
        for word in words:
            await stream.send(word)
        session.push_control(ACK)
        with trio.fail_after(10):
            await session.lanes.wait_written()
            await all_read.wait()
        nursery.cancel_scope.cancel()
    got = texts_on_complete(received)
    deltas = [json.loads(text)["payload"]["delta"] for text in got if "STREAM" in text]
    assert deltas == words
    assert stream.record.frames_written == len(words)
    assert session.ends == []
    await peer.aclose()
    await guarded.aclose()


def texts_on_complete(wire: bytearray) -> list[str]:
    """The whole messages received so far (a last, partial frame is left out)."""
    out: list[str] = []
    at = 0
    while at + 2 <= len(wire):
        length, head = wire[at + 1] & 0x7F, at + 2
        if length == 126:
            if head + 2 > len(wire):
                break
            length, head = int.from_bytes(wire[head : head + 2], "big"), head + 2
        elif length == 127:
            if head + 8 > len(wire):
                break
            length, head = int.from_bytes(wire[head : head + 8], "big"), head + 8
        if head + length > len(wire):
            break
        out.append(bytes(wire[head : head + length]).decode())
        at = head + length
    return out


async def test_a_stream_in_full_flow_is_batched_and_a_paced_one_goes_directly(mock_clock):
    """A STREAM frame sent straight after the previous send (``flowing``) waits for the
    writer and its batch; one sent after a wait goes at once, even right after a write,
    as does a request's first. An AUDIO chunk, or a spoken reply's word, waits within
    COMPANY_WINDOW_S of the last write."""
    inner = PartialSocket()
    session = Session(inner)
    stream = session.stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        session.lanes.push_stream(stream_frame(stream, "first"))  # a reply's first: at once
        session.lanes.push_stream(stream_frame(stream, "hot", flowing=True))  # queued
        assert session.lanes.queued == 1
        await trio.testing.wait_all_tasks_blocked()
        assert [path for path, _ in inner.writes] == ["now", "all"]
        session.lanes.push_stream(stream_frame(stream, "paced"))  # after a wait: at once
        assert session.lanes.queued == 0
        assert [path for path, _ in inner.writes] == ["now", "all", "now"]
        # Control frames never wait for company.
        session.push_control(ACK)
        assert [path for path, _ in inner.writes][-1] == "now"
        # An AUDIO chunk right after a write waits for company; past the window it goes.
        session.lanes.push_stream(audio_frame(stream, b"\x00\x01"))
        assert session.lanes.queued == 1
        await trio.testing.wait_all_tasks_blocked()
        assert len(inner.writes) == 5
        mock_clock.jump(COMPANY_WINDOW_S)
        session.lanes.push_stream(audio_frame(stream, b"\x02\x03"))
        assert session.lanes.queued == 0
        assert [path for path, _ in inner.writes][-1] == "now"
        # So does a spoken reply's word (the speech stage queues words and chunks in
        # groups with no wait between): within the window it waits, past it it goes.
        session.lanes.push_stream(stream_frame(stream, " spoken"))
        assert session.lanes.queued == 1
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(COMPANY_WINDOW_S)
        session.lanes.push_stream(stream_frame(stream, " later"))
        assert session.lanes.queued == 0
        assert [path for path, _ in inner.writes][-1] == "now"
        nursery.cancel_scope.cancel()
    assert [json.loads(text)["payload"]["delta"] for text in texts_on(inner.wire)[:3]] == [
        "first",
        "hot",
        "paced",
    ]


async def test_over_a_socket_the_trace_tells_queued_before_written(start_server, tmp_path):
    """Frames written inside their push (an idle writer, a real socket) are traced as
    queued first, as the timeline plot pairs them (ACK queued -> ACK written)."""
    path = tmp_path / "trace.jsonl"
    server = await start_server(trace=str(path))
    async with connect(server, "socket") as client:
        await client.request("r1", agent="lorem", words=100_000, words_per_s=50)
        await client.recv_until(lambda f: f["msg_type"] == "STREAM")
        await client.interrupt("r1")
        await client.until_done("r1")
    await server.wait_idle()
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    for queued, written in (("ack_queued", "ack_written"), ("stream_queued", "stream_written")):
        assert queued in events
        assert written in events
        assert events.index(queued) < events.index(written)
    assert events.count("ack_written") == 1


async def test_a_failure_in_a_direct_writes_bookkeeping_ends_the_session_in_the_writer():
    """The producer never sees the writer's errors: the writer raises it in its own
    task and ends the session as for any internal error of its own."""
    inner = PartialSocket()
    session = Session(inner)

    def refuse(frame: Outbound, text: str | bytes) -> None:
        raise RuntimeError("replay buffer broke")

    session.writer._on_written = refuse
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.writer.run)
        await trio.testing.wait_all_tasks_blocked()
        session.push_control(ACK)  # does not raise
        await trio.testing.wait_all_tasks_blocked()
        assert [(end.reason, end.resumable) for end in session.ends] == [
            ("internal error in the writer", False)
        ]
        nursery.cancel_scope.cancel()
