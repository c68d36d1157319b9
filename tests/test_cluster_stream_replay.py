"""restore_stream: a session's frames read back from the store, ready for a resume (pure)."""

from __future__ import annotations

from trio_agent.cluster.store import StoredFrame, StoredSort
from trio_agent.cluster.stream_replay import restore_stream
from trio_agent.server.replay import Gap, Replay

S, A, D = StoredSort.STREAM, StoredSort.AUDIO, StoredSort.DONE


def frames(*specs: tuple[str, StoredSort, int, int]) -> list[StoredFrame]:
    """(request id, sort, seq, frames) -> stored frames with ids 1-0, 2-0, ..."""
    return [
        StoredFrame(f"{i + 1}-0", rid, sort, seq, f"{rid}:{sort.value}{seq}", "a", frames)
        for i, (rid, sort, seq, frames) in enumerate(specs)
    ]


def test_a_finished_request_replays_what_the_client_lacks_then_its_done() -> None:
    restored = restore_stream(
        frames(("r1", S, 0, -1), ("r1", S, 1, -1), ("r1", S, 2, -1), ("r1", D, -1, 3)),
        capacity_bytes=1 << 20,
        running={},
    )
    assert restored.replay.replay("r1", 0) == Replay(("r1:s1", "r1:s2", "r1:d-1"), True)
    assert restored.running == {}
    assert restored.last_entry_id == "4-0"


def test_a_request_running_elsewhere_is_listed_with_where_its_frames_got_to() -> None:
    restored = restore_stream(
        frames(("r1", S, 0, -1), ("r1", S, 1, -1), ("r1", A, 0, -1)),
        capacity_bytes=1 << 20,
        running={"r1": "node-a", "r2": "node-b"},
    )
    assert restored.running["r1"].node_id == "node-a"
    assert restored.running["r1"].next_seq == 2
    assert restored.running["r1"].next_audio_seq == 1
    # r2 started on node-b and wrote nothing yet: it runs, with nothing to replay.
    assert restored.running["r2"].next_seq == 0
    assert restored.replay.replay("r2", -1) == Replay((), False)


def test_the_first_done_cuts_the_request_at_its_count() -> None:
    # Node B cut r1 after the client got seq 0..1 (DONE frames=2); node A had stored
    # seq 2 before it heard, and its own DONE after: neither is part of the reply.
    restored = restore_stream(
        frames(
            ("r1", S, 0, -1),
            ("r1", S, 1, -1),
            ("r1", S, 2, -1),
            ("r1", D, -1, 2),
            ("r1", S, 3, -1),
            ("r1", D, -1, 4),
        ),
        capacity_bytes=1 << 20,
        running={"r1": "node-a"},
    )
    assert restored.replay.replay("r1", 0) == Replay(("r1:s1", "r1:d-1"), True)
    assert "r1" not in restored.running


def test_a_frame_stored_twice_is_replayed_once() -> None:
    restored = restore_stream(
        frames(("r1", S, 0, -1), ("r1", S, 1, -1), ("r1", S, 1, -1), ("r1", S, 2, -1)),
        capacity_bytes=1 << 20,
        running={"r1": "a"},
    )
    assert restored.replay.replay("r1", -1) == Replay(("r1:s0", "r1:s1", "r1:s2"), False)


def test_a_trimmed_stream_is_a_gap_for_a_client_that_lacks_the_trimmed_frames() -> None:
    restored = restore_stream(
        frames(("r1", S, 5, -1), ("r1", S, 6, -1)), capacity_bytes=1 << 20, running={"r1": "a"}
    )
    assert restored.replay.replay("r1", 4) == Replay(("r1:s5", "r1:s6"), False)
    assert isinstance(restored.replay.replay("r1", 2), Gap)


def test_an_id_used_again_after_its_done_starts_a_new_request() -> None:
    restored = restore_stream(
        frames(("r1", S, 0, -1), ("r1", D, -1, 1), ("r1", S, 0, -1), ("r1", S, 1, -1)),
        capacity_bytes=1 << 20,
        running={"r1": "a"},
    )
    assert restored.running["r1"].next_seq == 2
    assert restored.replay.replay("r1", -1) == Replay(("r1:s0", "r1:s1"), False)
