"""The replay buffer: the frames a session wrote, kept so a resume can send them again.

Pure (no I/O, no Trio). A frame counts as written once the writer put it on a
connection (``docs/architecture.md``), but a connection that drops may have lost
the last of them on the way: the client's RESUME says, per request, the last
``seq`` it received, and :meth:`ReplayBuffer.replay` answers with every frame
after it, or :class:`Gap` when some of them are no longer held. The buffer is
bounded in bytes (``--resume-buffer-kib``): the oldest frames are evicted first,
and what was evicted is remembered per request as the highest ``seq`` gone, so a
gap is always detected, never papered over.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["FrameSort", "Gap", "Replay", "ReplayBuffer", "Unknown"]


class FrameSort(Enum):
    """What a written frame is to the replay: its own sequence, or the end."""

    STREAM = "stream"
    AUDIO = "audio"
    DONE = "done"


#: One frame held: (request id, its sort's value, seq, data, size in bytes).
#:
#: A plain tuple of str, int and bytes on purpose. The garbage collector stops
#: tracking such a tuple at the first collection it survives, so the thousands of
#: frames a busy server holds never reach the collector's oldest generation. As
#: objects of a class they did: every frame written added one, and each full
#: collection then walked them all, tens of milliseconds in which no session of
#: the server moved (docs/performance.md, "Tuning the hot path"). For the same
#: reason a frame names its request by id, not by a reference to its track.
_Kept = tuple[str, str, int, "str | bytes", int]

_STREAM = FrameSort.STREAM.value
_AUDIO = FrameSort.AUDIO.value
_DONE = FrameSort.DONE.value
_SORTS = {sort.value: sort for sort in FrameSort}


@dataclass(slots=True, eq=False)
class _Track:
    """One request's frames still held, and what was evicted of it."""

    kept: deque[_Kept] = field(default_factory=deque)
    #: STREAM frames written (DONE.frames of a RESUME_GAP DONE).
    stream_written: int = 0
    done_written: bool = False
    #: The highest ``seq`` evicted (-1: none), and whether its DONE was.
    stream_evicted_to: int = -1
    audio_evicted_to: int = -1
    done_evicted: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    """The frames to send again, in the order they were written; ``ended``: the DONE is among them."""

    frames: tuple[str | bytes, ...]
    ended: bool


@dataclass(frozen=True, slots=True)
class Gap:
    """Frames the client lacks are no longer held; ``frames_written``: its STREAM frames written."""

    frames_written: int
    ended: bool


@dataclass(frozen=True, slots=True)
class Unknown:
    """The buffer holds no record of this request id (never written, or forgotten)."""


class ReplayBuffer:
    """The frames written for one session's requests, bounded in bytes.

    :param capacity_bytes: the most bytes of frames held; the oldest frame goes
        first when a new one would take the buffer past it (a frame larger than
        the whole capacity is not kept at all: it is a gap at once).
    :param max_requests: how many request ids are remembered (the oldest are forgotten).
    """

    def __init__(self, capacity_bytes: int, *, max_requests: int = 512) -> None:
        if capacity_bytes < 0 or max_requests < 1:
            raise ValueError("capacity_bytes must not be negative, max_requests must be positive")
        self.capacity_bytes = capacity_bytes
        self.max_requests = max_requests
        self._held: deque[_Kept] = deque()
        self._bytes = 0
        self._tracks: OrderedDict[str, _Track] = OrderedDict()

    @property
    def bytes_held(self) -> int:
        return self._bytes

    @property
    def frames_held(self) -> int:
        return len(self._held)

    def request_started(self, request_id: str) -> None:
        """A request with this id starts: what an earlier one of that id left is forgotten."""
        self._tracks.pop(request_id, None)
        self._track(request_id)

    def written(self, request_id: str, sort: FrameSort, seq: int, data: str | bytes) -> None:
        """Keep one frame the writer has just written (``seq``: -1 for a DONE)."""
        # The writer's hot path (once per frame): plain branches, no helper calls
        # unless the request is new or the buffer is full.
        track = self._tracks.get(request_id)
        if track is None:
            track = self._track(request_id)
        if sort is FrameSort.STREAM:
            if seq >= track.stream_written:
                track.stream_written = seq + 1
        elif sort is FrameSort.DONE:
            track.done_written = True
        size = (
            len(data)
            if not isinstance(data, str) or data.isascii()
            else len(data.encode("utf-8", "surrogatepass"))
        )
        kept = (request_id, sort.value, seq, data, size)
        capacity = self.capacity_bytes
        if size > capacity:
            self._evicted(track, kept)
            return
        while self._bytes + size > capacity:
            self._evict_oldest()
        self._held.append(kept)
        track.kept.append(kept)
        self._bytes += size

    def replay(
        self, request_id: str, last_seq: int, last_audio_seq: int = -1
    ) -> Replay | Gap | Unknown:
        """Every frame of ``request_id`` after ``last_seq`` (STREAM) and ``last_audio_seq``
        (AUDIO), then its DONE if it was written; or :class:`Gap` when one of them was evicted."""
        track = self._tracks.get(request_id)
        if track is None:
            return Unknown()
        if (
            track.stream_evicted_to > last_seq
            or track.audio_evicted_to > last_audio_seq
            or track.done_evicted
        ):
            return Gap(track.stream_written, track.done_written)
        frames = tuple(
            data
            for _, sort, seq, data, _ in track.kept
            if sort == _DONE
            or (sort == _STREAM and seq > last_seq)
            or (sort == _AUDIO and seq > last_audio_seq)
        )
        return Replay(frames, track.done_written)

    def held(self) -> list[tuple[str, FrameSort, int, str | bytes]]:
        """Every frame held, oldest first: (request id, sort, seq, data)."""
        return [
            (request_id, _SORTS[sort], seq, data)
            for request_id, track in self._tracks.items()
            for _, sort, seq, data, _ in track.kept
        ]

    def evicted_before(self, request_id: str, *, stream_seq: int, audio_seq: int) -> None:
        """Frames of ``request_id`` before ``stream_seq`` (STREAM) and ``audio_seq`` (AUDIO)
        were written but are not held: a buffer rebuilt from a trimmed copy says so,
        and a replay that needs them is a :class:`Gap`."""
        track = self._track(request_id)
        track.stream_evicted_to = max(track.stream_evicted_to, stream_seq - 1)
        track.audio_evicted_to = max(track.audio_evicted_to, audio_seq - 1)
        track.stream_written = max(track.stream_written, stream_seq)

    def frames_written(self, request_id: str) -> int:
        track = self._tracks.get(request_id)
        return track.stream_written if track is not None else 0

    def _track(self, request_id: str) -> _Track:
        track = self._tracks.get(request_id)
        if track is None:
            track = self._tracks[request_id] = _Track()
            while len(self._tracks) > self.max_requests:
                self._tracks.popitem(last=False)
        return track

    def _evict_oldest(self) -> None:
        kept = self._held.popleft()
        self._bytes -= kept[4]
        # Frames leave both queues oldest first, so a frame still in its track is the
        # track's first. One whose track is gone (forgotten, or its id started anew)
        # is no longer anybody's: nothing to record.
        track = self._tracks.get(kept[0])
        if track is not None and track.kept and track.kept[0] is kept:
            track.kept.popleft()
            self._evicted(track, kept)

    @staticmethod
    def _evicted(track: _Track, kept: _Kept) -> None:
        sort, seq = kept[1], kept[2]
        if sort == _STREAM:
            track.stream_evicted_to = max(track.stream_evicted_to, seq)
        elif sort == _AUDIO:
            track.audio_evicted_to = max(track.audio_evicted_to, seq)
        else:
            track.done_evicted = True
