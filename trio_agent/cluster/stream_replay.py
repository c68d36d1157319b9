"""A session's frames read back from its stream in the store, made ready for a resume.

Pure (no I/O). A node that takes a session over rebuilds from the stream what the
node that wrote it kept in memory: a :class:`~trio_agent.server.replay.ReplayBuffer`
(so RESUMED and the replay are decided exactly as on one node), and, for each
request still running on another node, where its frames have got to (the relay
goes on from there).

Two nodes may write about one request: the node that runs it, and the node that
serves the client's connection and cut it (a cross-node INTERRUPT), whose DONE
counts what its client received. The first DONE of a request in the stream is
its DONE, and it cuts the request at its ``frames``: a STREAM frame the running
node wrote after the cut, or a second DONE, is not part of the reply. A request
id may be used again once its DONE is written: a frame with ``seq`` 0 after a
DONE starts the new request of that id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trio_agent.cluster.store import StoredFrame, StoredSort
from trio_agent.server.replay import FrameSort, ReplayBuffer

__all__ = ["STORED_SORT", "RestoredStream", "RunningElsewhere", "restore_stream"]

#: What a written frame is called in the store (and, reversed, back).
STORED_SORT = {
    FrameSort.STREAM: StoredSort.STREAM,
    FrameSort.AUDIO: StoredSort.AUDIO,
    FrameSort.DONE: StoredSort.DONE,
}
_SORTS = {stored: sort for sort, stored in STORED_SORT.items()}


@dataclass(slots=True)
class RunningElsewhere:
    """A request whose DONE is not in the stream, and the node the store says runs it."""

    node_id: str
    #: The next STREAM ``seq`` (the frames the client will have once the replay is sent).
    next_seq: int = 0
    #: The next AUDIO ``seq``.
    next_audio_seq: int = 0


@dataclass
class RestoredStream:
    """What a stream says, ready for :func:`~trio_agent.server.resumption.resume_answer`."""

    replay: ReplayBuffer
    running: dict[str, RunningElsewhere] = field(default_factory=dict)
    #: The id of the last entry read: the relay goes on after it.
    last_entry_id: str = "0"


@dataclass(slots=True)
class _Life:
    """One request of an id, from its first frame to its (first) DONE."""

    first_stream: int | None = None
    first_audio: int | None = None
    next_seq: int = 0
    next_audio_seq: int = 0
    done_frames: int | None = None


def restore_stream(
    frames: list[StoredFrame], *, capacity_bytes: int, running: dict[str, str]
) -> RestoredStream:
    """Rebuild the replay buffer from ``frames`` (oldest first), and list the requests
    ``running`` (request id -> node, from the store's book) whose DONE is not among them."""
    cut = _first_dones(frames)
    replay = ReplayBuffer(capacity_bytes)
    lives: dict[str, _Life] = {}
    incarnation: dict[str, int] = {}
    last = "0"
    for frame in frames:
        last = frame.entry_id
        rid = frame.request_id
        life = lives.get(rid)
        if life is None or (life.done_frames is not None and frame.seq == 0):
            if life is not None:
                incarnation[rid] = incarnation.get(rid, 0) + 1
            life = lives[rid] = _Life()
            replay.request_started(rid)
        if life.done_frames is not None:
            continue  # after the request's DONE: not part of its reply
        limit = cut.get((rid, incarnation.get(rid, 0)))
        if frame.sort is StoredSort.DONE:
            life.done_frames = frame.frames
            replay.written(rid, FrameSort.DONE, -1, frame.data)
            continue
        if frame.sort is StoredSort.STREAM:
            if limit is not None and frame.seq >= limit:
                continue
            if life.first_stream is None:
                life.first_stream = frame.seq
                if frame.seq > 0:
                    replay.evicted_before(rid, stream_seq=frame.seq, audio_seq=0)
            if frame.seq < life.next_seq:
                continue  # the same frame twice
            life.next_seq = frame.seq + 1
        else:
            if life.first_audio is None:
                life.first_audio = frame.seq
                if frame.seq > 0:
                    replay.evicted_before(rid, stream_seq=0, audio_seq=frame.seq)
            if frame.seq < life.next_audio_seq:
                continue
            life.next_audio_seq = frame.seq + 1
        replay.written(rid, _SORTS[frame.sort], frame.seq, frame.data)
    restored = RestoredStream(replay, last_entry_id=last)
    for rid, node in running.items():
        life = lives.get(rid)
        if life is not None and life.done_frames is not None:
            continue
        restored.running[rid] = RunningElsewhere(
            node,
            next_seq=life.next_seq if life else 0,
            next_audio_seq=life.next_audio_seq if life else 0,
        )
        if life is None:
            replay.request_started(rid)
    return restored


def _first_dones(frames: list[StoredFrame]) -> dict[tuple[str, int], int]:
    """The ``frames`` of each request's first DONE, by (request id, incarnation)."""
    cut: dict[tuple[str, int], int] = {}
    incarnation: dict[str, int] = {}
    ended: set[str] = set()
    for frame in frames:
        rid = frame.request_id
        if rid in ended and frame.sort is not StoredSort.DONE and frame.seq == 0:
            ended.discard(rid)
            incarnation[rid] = incarnation.get(rid, 0) + 1
        if frame.sort is StoredSort.DONE and rid not in ended:
            ended.add(rid)
            cut[(rid, incarnation.get(rid, 0))] = frame.frames
    return cut
