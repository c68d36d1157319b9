"""Two outbound lanes in front of one writer task.

A priority lane for control frames (the INTERRUPT_ACK is the next frame on the
wire), bounded in frames and in bytes, and a bounded stream lane, fair between
requests, whose wait is the agents' backpressure and where an interrupt lands. ``fifo=True`` is the one-queue design,
kept for comparison. ``docs/architecture.md`` explains the design.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from trio_agent.protocol.constants import FrameKind

if TYPE_CHECKING:
    from trio_agent.server.registry import RequestRecord


#: The frames an INTERRUPT drops from the stream lane (a queued DONE stays).
_DISCARDABLE = (FrameKind.STREAM, FrameKind.AUDIO)


@dataclass(slots=True, eq=False)
class Outbound:
    """One frame waiting for the writer.

    ``data`` is the encoded frame (``bytes`` for an AUDIO chunk, sent as a binary
    message), or ``None`` for a DONE: a DONE is rendered when the writer takes it,
    so its ``frames`` counts exactly the STREAM frames that reached the socket
    before it.
    """

    kind: FrameKind
    data: str | bytes | None = None
    record: RequestRecord | None = None
    #: For an AUDIO chunk: its samples, and its milliseconds of sound.
    samples: int = 0
    audio_ms: float = 0.0
    #: For an INTERRUPT_ACK: when its INTERRUPT was read (``trio.current_time()``),
    #: so the writer can log the read-to-written latency.
    read_at: float | None = None
    #: What this frame counts against its lane's byte bound (set as it is queued).
    lane_bytes: int = 0
    #: For a STREAM frame or an AUDIO chunk: its ``seq`` (the replay buffer keys on it).
    seq: int = -1
    #: For an INTERRUPT_ACK: its INTERRUPT's ``msg_id`` (a dropped ACK is reported on resume).
    ack_of: str | None = None
    #: For a STREAM frame: sent straight after its request's previous send, with no
    #: wait in between (a reply in full flow). The writer batches such a frame
    #: rather than have its producer write it (``Writer._write_directly``).
    flowing: bool = False


#: What a queued DONE counts in bytes besides its reason: it is rendered only when
#: written, and its other fields (ids, status, counts) are bounded and small.
DONE_BYTES_ESTIMATE: Final = 512


def utf8_length(text: str) -> int:
    """The bytes of ``text`` in UTF-8, without encoding it when it is ASCII (O(1))."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def frame_bytes(frame: Outbound) -> int:
    """What ``frame`` will be on the wire, near enough to bound memory by.

    A DONE is rendered when it is written, so it is estimated: its reason (the
    client's INTERRUPT reason, for an interrupted one) plus a fixed allowance.
    """
    data = frame.data
    if isinstance(data, str):
        return utf8_length(data)
    if data is not None:
        return len(data)
    record = frame.record
    reason = record.reason if record is not None else None
    return DONE_BYTES_ESTIMATE + (utf8_length(reason) if reason else 0)


class _Turns:
    """The stream lane's queue: one FIFO per request, served in turn (round robin).

    ``key`` is the request a frame belongs to (``None`` puts everything in one
    queue, which is what ``fifo`` mode does).
    """

    __slots__ = ("_len", "_order", "_queues")

    def __init__(self) -> None:
        self._queues: dict[RequestRecord | None, deque[Outbound]] = {}
        self._order: deque[RequestRecord | None] = deque()  # whose turn is next
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, key: RequestRecord | None, frame: Outbound) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._order.append(key)
        queue.append(frame)
        self._len += 1

    def popleft(self) -> Outbound:
        key = self._order.popleft()
        queue = self._queues[key]
        frame = queue.popleft()
        if queue:
            self._order.append(key)  # back of the line
        else:
            del self._queues[key]
        self._len -= 1
        return frame

    def holds_nothing_of(self, key: RequestRecord) -> bool:
        return key not in self._queues

    def drop_stream_frames(self, key: RequestRecord) -> list[Outbound]:
        """Remove ``key``'s STREAM and AUDIO frames (its DONE, if queued, stays);
        return them."""
        queue = self._queues.get(key)
        if queue is None:
            return []
        kept = deque(frame for frame in queue if frame.kind not in _DISCARDABLE)
        dropped = [frame for frame in queue if frame.kind in _DISCARDABLE]
        self._len -= len(dropped)
        if kept:
            self._queues[key] = kept
        else:
            del self._queues[key]
            self._order.remove(key)
        return dropped


class LaneOverflow(Exception):
    """The priority lane is full: the client sends control traffic but does not read."""


class OutboundLanes:
    """The priority lane and the bounded stream lane of one connection.

    :param stream_capacity: STREAM frames the stream lane holds before
        :meth:`wait_for_stream_room` blocks.
    :param priority_capacity: control frames the priority lane holds before
        :meth:`push_priority` raises :class:`LaneOverflow`.
    :param priority_bytes: bytes of control frames (UTF-8, as they will be sent) the
        priority lane holds; a frame that would take it past that raises
        :class:`LaneOverflow`, even into an empty lane, so the lane never holds more.
    :param stream_bytes: bytes of STREAM frames past which the stream lane has no
        room (backpressure, as ``stream_capacity``); a request with nothing queued
        still has room for one frame, so a single frame larger than that is sent.
    :param audio_budget_ms: milliseconds of AUDIO the stream lane holds before
        :meth:`wait_for_audio_room` blocks (a chunk longer than that still goes
        alone into an empty lane).
    :param fifo: diagnostic mode: a single first-in-first-out queue.
    """

    def __init__(
        self,
        *,
        stream_capacity: int,
        priority_capacity: int,
        priority_bytes: int = 262_144,
        stream_bytes: int = 524_288,
        audio_budget_ms: float = 200.0,
        fifo: bool = False,
    ) -> None:
        if min(stream_capacity, priority_capacity, priority_bytes, stream_bytes) < 1:
            raise ValueError("lane capacities must be at least 1")
        if not audio_budget_ms > 0:
            raise ValueError("the audio budget must be positive")
        self.stream_capacity = stream_capacity
        self.priority_capacity = priority_capacity
        self.priority_bytes_capacity = priority_bytes
        self.stream_bytes_capacity = stream_bytes
        #: Bytes of the frames waiting in the priority lane, and in the stream lane
        #: (STREAM frames only: AUDIO is bounded in milliseconds).
        self._priority_bytes = 0
        self._stream_bytes = 0
        self.audio_budget_ms = audio_budget_ms
        self.fifo = fifo
        #: AUDIO chunks in the stream lane, and their milliseconds (the budget's measure).
        self._audio_frames = 0
        self._audio_ms = 0.0
        self._audio_room = trio.lowlevel.ParkingLot()  # speakers waiting for audio room
        self._priority: deque[Outbound] = deque()
        self._stream = _Turns()
        #: STREAM frames in the stream lane (the ones its capacity bounds).
        self._stream_frames = 0
        self._writer_busy = False
        self._writer_gone = False
        #: The writer's direct write (``Writer._write_directly``), set only while the
        #: writer is parked in :meth:`next_frame` with nothing in hand: a frame pushed
        #: into empty lanes then goes to the socket from the task that pushed it.
        self._direct: Callable[[Outbound], bool] | None = None
        #: A direct write left bytes under the cork: the writer flushes them first.
        self._flush_wanted = False
        self._room = trio.lowlevel.ParkingLot()  # agents waiting for stream room
        self._ready = trio.lowlevel.ParkingLot()  # the writer waiting for a frame
        self._idle = trio.lowlevel.ParkingLot()  # tasks waiting for everything to be written

    # -- producers ---------------------------------------------------------------------

    def push_priority(self, frame: Outbound) -> None:
        """Queue a control frame ahead of every stream frame. Never blocks.

        Raises :class:`LaneOverflow` when the priority lane is full: it holds
        ``priority_capacity`` frames, or ``frame`` would take it past
        ``priority_bytes`` bytes.
        """
        if self.fifo:
            if self._written_directly(frame):
                return
            self._stream.append(None, frame)
        else:
            if len(self._priority) >= self.priority_capacity:
                raise LaneOverflow(
                    f"{len(self._priority)} control frames are waiting for a client that does not read"
                )
            # A text has at least as many bytes as characters: a frame that is too
            # long in characters is refused before its bytes are counted (which
            # would copy a non-ASCII text once more).
            data = frame.data
            too_long = isinstance(data, str) and (
                self._priority_bytes + len(data) > self.priority_bytes_capacity
            )
            size = len(data) if too_long and isinstance(data, str) else frame_bytes(frame)
            if self._priority_bytes + size > self.priority_bytes_capacity:
                raise LaneOverflow(
                    f"a control frame of {size} bytes would take the {self._priority_bytes} "
                    f"bytes waiting past {self.priority_bytes_capacity}"
                )
            if self._written_directly(frame):
                return
            frame.lane_bytes = size
            self._priority_bytes += size
            self._priority.append(frame)
        self._ready.unpark()

    async def wait_for_stream_room(self, record: RequestRecord | None = None) -> None:
        """Wait until the stream lane has room for one more STREAM frame of ``record``.

        Always a checkpoint: cancellation is delivered here even when there is room,
        which is what makes ``await stream.send(...)`` an interrupt point. When it
        returns, the room is there until the caller's next ``await``, so the caller
        pushes with :meth:`push_stream` without awaiting in between.

        A request with nothing queued always has room for one frame, even when
        other requests have filled the lane: a new reply's first word (or a slow
        one's next word) does not wait for another request's backlog. That lets
        the lane exceed its capacity by at most one frame per request, and requests
        per connection are bounded.
        """
        await trio.lowlevel.checkpoint()
        if not self._has_room_for(record):
            while not self._has_room_for(record):
                await self._room.park()
            # park() returns normally when a pop woke us, even if our scope was
            # cancelled before we ran again (an INTERRUPT read in the same tick).
            # Deliver that cancellation here, so the agent never pushes for a
            # request that has already ended.
            await trio.lowlevel.checkpoint_if_cancelled()

    def has_stream_room(self, record: RequestRecord | None = None) -> bool:
        """Whether :meth:`wait_for_stream_room` would return without waiting for room.

        For a producer that has just checkpointed some other way and wants to
        queue several frames with no schedule point between them (the speech
        stage's groups of chunks); everyone else calls the wait.
        """
        return self._has_room_for(record)

    def _has_room_for(self, record: RequestRecord | None) -> bool:
        return (
            self._stream_frames < self.stream_capacity
            and self._stream_bytes < self.stream_bytes_capacity
        ) or (record is not None and not self.fifo and self._stream.holds_nothing_of(record))

    async def wait_for_audio_room(self, audio_ms: float) -> None:
        """Wait until the stream lane can take ``audio_ms`` more milliseconds of AUDIO.

        Like :meth:`wait_for_stream_room`: always a checkpoint, cancellation is
        delivered even when a discard is what made the room, and the room is there
        until the caller's next ``await`` (push with :meth:`push_stream` at once).
        An empty lane always takes one chunk, so a chunk longer than the budget
        cannot wait forever.
        """
        await trio.lowlevel.checkpoint()
        if not self._has_audio_room_for(audio_ms):
            while not self._has_audio_room_for(audio_ms):
                await self._audio_room.park()
            await trio.lowlevel.checkpoint_if_cancelled()

    def has_audio_room(self, audio_ms: float) -> bool:
        """Whether :meth:`wait_for_audio_room` would return without waiting for room
        (see :meth:`has_stream_room`)."""
        return self._has_audio_room_for(audio_ms)

    def _has_audio_room_for(self, audio_ms: float) -> bool:
        # The tolerance absorbs float rounding of fractional chunk durations.
        return not self._audio_frames or self._audio_ms + audio_ms <= self.audio_budget_ms + 1e-9

    def _written_directly(self, frame: Outbound) -> bool:
        """Whether ``frame`` was just written by the pushing task: only while the
        writer sleeps with both lanes empty (see :meth:`next_frame`)."""
        direct = self._direct
        return direct is not None and not self._priority and not self._stream and direct(frame)

    def push_stream(self, frame: Outbound) -> None:
        """Queue a STREAM frame or an AUDIO chunk; call right after
        :meth:`wait_for_stream_room` (STREAM) or :meth:`wait_for_audio_room` (AUDIO)."""
        if self._written_directly(frame):
            return
        self._stream.append(self._turn_of(frame), frame)
        if frame.kind is FrameKind.AUDIO:
            self._audio_frames += 1
            self._audio_ms += frame.audio_ms
        else:
            self._stream_frames += 1
            frame.lane_bytes = frame_bytes(frame)
            self._stream_bytes += frame.lane_bytes
        self._ready.unpark()

    def push_stream_terminal(self, frame: Outbound) -> None:
        """Queue a DONE behind its request's STREAM frames, without waiting for room.

        Terminal frames do not count against the stream capacity: each request has
        exactly one and the number of requests is bounded, so this stays bounded,
        and ending a request never has to wait for a slow client.
        """
        if self._written_directly(frame):
            return
        self._stream.append(self._turn_of(frame), frame)
        self._ready.unpark()

    def discard(self, record: RequestRecord) -> int:
        """Drop every queued STREAM frame and AUDIO chunk of ``record``; return how
        many frames were dropped (AUDIO chunks included).

        In ``fifo`` mode nothing is dropped (that is the point of the mode).
        """
        if self.fifo:
            return 0
        dropped = self._stream.drop_stream_frames(record)
        text = sum(1 for frame in dropped if frame.kind is FrameKind.STREAM)
        if text:
            self._stream_frames -= text
            self._stream_bytes -= sum(
                frame.lane_bytes for frame in dropped if frame.kind is FrameKind.STREAM
            )
            self._room.unpark(count=text)
        if len(dropped) > text:
            for frame in dropped:
                if frame.kind is FrameKind.AUDIO:
                    self._audio_taken(frame)
        return len(dropped)

    def _audio_taken(self, frame: Outbound) -> None:
        """An AUDIO chunk left the lane (written or dropped): free its milliseconds."""
        self._audio_frames -= 1
        # Exactly zero when the lane holds no audio, whatever the rounding on the way.
        self._audio_ms = self._audio_ms - frame.audio_ms if self._audio_frames else 0.0
        self._audio_room.unpark_all()

    def _turn_of(self, frame: Outbound) -> RequestRecord | None:
        # fifo mode: one queue for everything, in arrival order.
        return None if self.fifo else frame.record

    # -- the writer ---------------------------------------------------------------------

    async def next_frame(self, direct: Callable[[Outbound], bool] | None = None) -> Outbound | None:
        """Take the next frame for the writer: the priority lane first, always.

        Waits while both lanes are empty. A cancellation point; it only schedules
        when it has to wait, because the writer's socket send right after is one.

        ``direct``: while it waits, a frame pushed into the empty lanes is handed to
        ``direct`` in the pushing task (synchronously, inside ``push_*``) instead of
        being queued; ``direct`` returns ``False`` to have it queued after all. The
        priority lane is still drained first: both lanes are empty. Returns
        ``None`` (only with ``direct``) when a direct write left bytes to flush
        (:meth:`flush_wanted`) and nothing is queued.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._priority and not self._stream:
            if self._flush_wanted:
                self._flush_wanted = False
                return None
            self._writer_busy = False
            self._idle.unpark_all()
            self._direct = direct
            try:
                await self._ready.park()
            finally:
                self._direct = None
        # Queued frames join what a direct write left, in one flush.
        self._flush_wanted = False
        self._writer_busy = True
        if self._priority:
            frame = self._priority.popleft()
            self._priority_bytes -= frame.lane_bytes
            return frame
        frame = self._stream.popleft()
        if frame.kind is FrameKind.STREAM:
            self._stream_frames -= 1
            self._stream_bytes -= frame.lane_bytes
            self._room.unpark()
        elif frame.kind is FrameKind.AUDIO:
            self._audio_taken(frame)
        return frame

    def flush_wanted(self) -> None:
        """A direct write left bytes under the cork: wake the writer to flush them
        before it takes anything else (:meth:`next_frame` returns ``None``). Until
        it has, no frame goes directly, and the writer counts as busy (so
        :meth:`wait_written` waits for that flush)."""
        self._flush_wanted = True
        self._writer_busy = True
        self._direct = None
        self._ready.unpark()

    def frame_written(self) -> None:
        """The writer finished sending the frame it took last."""
        self._writer_busy = False
        if not self._priority and not self._stream:
            self._idle.unpark_all()

    def writer_gone(self) -> None:
        """The writer stopped (the connection broke): nothing queued will be written."""
        self._writer_gone = True
        self._direct = None
        self._flush_wanted = False
        self._idle.unpark_all()

    def writer_back(self) -> None:
        """A new writer took over (a connection resumed the session): frames flow again."""
        self._writer_gone = False
        self._writer_busy = False
        self._flush_wanted = False

    def drop_control(self) -> list[Outbound]:
        """Remove the control frames waiting in the priority lane (a DONE stays); return them.

        For a connection that dropped: its HEARTBEAT replies, ERRORs and ACKs answered
        a connection that is gone (a resume reports the ACKs in RESUMED instead).
        """
        dropped = [frame for frame in self._priority if frame.kind is FrameKind.CONTROL]
        if dropped:
            self._priority = deque(f for f in self._priority if f.kind is not FrameKind.CONTROL)
            self._priority_bytes -= sum(frame.lane_bytes for frame in dropped)
        return dropped

    async def wait_written(self) -> None:
        """Wait until every queued frame has been written (used to flush on close),
        or until the writer is gone and nothing more will be."""
        await trio.lowlevel.checkpoint()
        while (self._priority or self._stream or self._writer_busy) and not self._writer_gone:
            await self._idle.park()

    # -- introspection ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Frames waiting in both lanes, terminal frames included."""
        return len(self._priority) + len(self._stream)

    @property
    def priority_depth(self) -> int:
        return len(self._priority)

    @property
    def priority_bytes(self) -> int:
        """Bytes of the control frames waiting in the priority lane."""
        return self._priority_bytes

    @property
    def stream_bytes(self) -> int:
        """Bytes of the STREAM frames waiting in the stream lane."""
        return self._stream_bytes

    @property
    def stream_depth(self) -> int:
        """STREAM frames waiting (terminal frames and AUDIO chunks not counted)."""
        return self._stream_frames

    @property
    def audio_queued_ms(self) -> float:
        """Milliseconds of AUDIO waiting in the stream lane."""
        return self._audio_ms
