"""The guarantee checker across resumes (protocol v1.2): one conversation over
several connections, SESSION then RESUMED on each new one, seq and frames counted
over all of them."""

from __future__ import annotations

from typing import Any

from trio_agent.protocol.guarantees import RESUME_GUARANTEE, GuaranteeChecker

OLD, NEW = "sess-old", "sess-new"


def frame(msg_type: str, session_id: str = OLD, **fields: Any) -> dict[str, Any]:
    return {"msg_type": msg_type, "session_id": session_id, **fields}


def stream(rid: str, seq: int) -> dict[str, Any]:
    return frame("STREAM", request_id=rid, payload={"seq": seq})


def done(rid: str, frames: int, **payload: Any) -> dict[str, Any]:
    return frame("DONE", request_id=rid, payload={"frames": frames, **payload})


def resumed(ref: str = "c9", interrupts: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return frame(
        "RESUMED",
        ref=ref,
        payload={"requests": {}, "interrupts": interrupts or {}, "resume": {"token": "t"}},
    )


def started(*rids: str, frames: int = 0) -> GuaranteeChecker:
    """A checker that has seen the first SESSION, REQUESTs and ``frames`` STREAMs each."""
    checker = GuaranteeChecker()
    checker.received(frame("SESSION"))
    for rid in rids:
        checker.sent({"msg_type": "REQUEST", "request_id": rid})
        for seq in range(frames):
            assert checker.received(stream(rid, seq)) == []
    return checker


def resume(checker: GuaranteeChecker, msg_id: str = "c9") -> None:
    checker.reconnected()
    assert checker.received(frame("SESSION", NEW)) == []
    checker.sent({"msg_type": "RESUME", "msg_id": msg_id, "session_id": OLD})


def numbers(violations: list[Any]) -> list[int]:
    return [v.guarantee for v in violations]


def test_a_clean_resume_continues_the_sequence():
    checker = started("r1", frames=3)
    resume(checker)
    assert checker.received(resumed()) == []
    assert checker.received(stream("r1", 3)) == []
    assert checker.received(done("r1", 4, status="completed")) == []
    assert checker.finish() == []
    assert checker.resumes == 1


def test_a_duplicate_or_a_gap_in_the_replay_is_reported():
    checker = started("r1", "r2", frames=2)
    resume(checker)
    checker.received(resumed())
    assert numbers(checker.received(stream("r1", 1))) == [2]  # a duplicate
    assert numbers(checker.received(stream("r2", 3))) == [2]  # a gap


def test_done_frames_count_each_seq_once_across_connections():
    checker = started("r1", frames=2)
    resume(checker)
    checker.received(resumed())
    checker.received(stream("r1", 2))
    assert numbers(checker.received(done("r1", 5))) == [2]


def test_a_resume_gap_done_counts_the_frames_written():
    checker = started("r1", frames=2)
    resume(checker)
    checker.received(resumed())
    gap = {"status": "failed", "error": {"code": "RESUME_GAP", "message": "gone"}}
    assert checker.received(done("r1", 9, **gap)) == []
    # Fewer frames than the client got is still wrong.
    checker = started("r2", frames=3)
    resume(checker)
    checker.received(resumed())
    assert numbers(checker.received(done("r2", 1, **gap))) == [2]


def test_the_new_connection_must_open_with_session_then_resumed():
    checker = started("r1")
    checker.reconnected()
    assert numbers(checker.received(stream("r1", 0))) == [RESUME_GUARANTEE]
    checker = started("r1")
    resume(checker)
    assert numbers(checker.received(stream("r1", 0))) == [RESUME_GUARANTEE]
    checker = started("r1")
    resume(checker)
    assert numbers(checker.received(resumed(ref="c1"))) == [RESUME_GUARANTEE]


def test_a_refused_resume_is_an_error_not_a_violation():
    checker = started("r1")
    resume(checker)
    refusal = frame("ERROR", NEW, ref="c9", payload={"code": "RESUME_UNKNOWN"})
    assert checker.received(refusal) == []


def test_after_resumed_every_frame_speaks_for_the_old_session():
    checker = started("r1")
    resume(checker)
    checker.received(resumed())
    wrong = {**stream("r1", 0), "session_id": NEW}
    assert numbers(checker.received(wrong)) == [RESUME_GUARANTEE]


def test_an_unrequested_resumed_is_reported():
    checker = started("r1")
    assert numbers(checker.received(resumed())) == [RESUME_GUARANTEE]


def test_resumed_interrupts_answer_a_pending_interrupt():
    checker = started("r1", frames=1)
    checker.sent({"msg_type": "INTERRUPT", "msg_id": "c5", "request_id": "r1"})
    resume(checker)
    assert checker.received(resumed(interrupts={"c5": ["r1"]})) == []
    # Frames written before that ACK may still be replayed; the DONE must be interrupted.
    assert checker.received(stream("r1", 1)) == []
    assert numbers(checker.received(done("r1", 2, interrupted=False))) == [5]
    assert checker.finish() == []  # the INTERRUPT is answered
    # A late real ACK for it is a second answer.
    ack = frame("INTERRUPT_ACK", ref="c5", payload={"interrupted": [], "interrupted_count": 0})
    assert numbers(checker.received(ack)) == [3]


def test_resumed_may_list_an_interrupt_whose_ack_had_arrived():
    checker = started("r1")
    checker.sent({"msg_type": "INTERRUPT", "msg_id": "c5", "request_id": "r1"})
    ack = frame("INTERRUPT_ACK", ref="c5", payload={"interrupted": ["r1"], "interrupted_count": 1})
    assert checker.received(ack) == []
    resume(checker)
    assert checker.received(resumed(interrupts={"c5": ["r1"]})) == []
    assert numbers(checker.received(resumed(interrupts={"c7": []}))) == [RESUME_GUARANTEE]


def test_resumed_listing_an_interrupt_never_sent_is_reported():
    checker = started("r1")
    resume(checker)
    assert numbers(checker.received(resumed(interrupts={"c42": ["r1"]}))) == [3]


def test_no_stream_after_a_real_ack_even_across_a_resume():
    checker = started("r1", frames=1)
    checker.sent({"msg_type": "INTERRUPT", "msg_id": "c5", "request_id": "r1"})
    ack = frame("INTERRUPT_ACK", ref="c5", payload={"interrupted": ["r1"], "interrupted_count": 1})
    checker.received(ack)
    resume(checker)
    checker.received(resumed())
    assert numbers(checker.received(stream("r1", 1))) == [5]
