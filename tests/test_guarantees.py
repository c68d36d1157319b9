"""The guarantee checker on its own: the memory bounds and the answers to an INTERRUPT."""

from __future__ import annotations

from trio_agent.protocol.guarantees import GuaranteeChecker


def request(rid: str) -> dict:
    return {"msg_type": "REQUEST", "request_id": rid}


def stream(rid: str, seq: int) -> dict:
    return {"msg_type": "STREAM", "request_id": rid, "payload": {"seq": seq}}


def done(rid: str, frames: int) -> dict:
    return {"msg_type": "DONE", "request_id": rid, "payload": {"frames": frames}}


def ack(ref: str) -> dict:
    return {
        "msg_type": "INTERRUPT_ACK",
        "ref": ref,
        "payload": {"interrupted": [], "interrupted_count": 0},
    }


def test_ended_ids_are_remembered_within_the_bound():
    checker = GuaranteeChecker(memory=2)
    for rid in ("a", "b", "c"):
        checker.sent(request(rid))
        assert checker.received(done(rid, 0)) == []
    # "c" is remembered: a late STREAM breaks guarantee 1; "a" has been forgotten.
    assert [v.guarantee for v in checker.received(stream("c", 0))] == [1]
    assert [v.guarantee for v in checker.received(stream("a", 0))] == [8]
    assert len(checker._ended) == 2


def test_answered_interrupts_are_remembered_within_the_bound():
    checker = GuaranteeChecker(memory=1)
    for ref in ("i1", "i2"):
        checker.sent({"msg_type": "INTERRUPT", "msg_id": ref})
        assert checker.received(ack(ref)) == []
    assert "a second" in checker.received(ack("i2"))[0].message
    assert "never sent" in checker.received(ack("i1"))[0].message
    assert checker.finish() == []


def test_an_interrupt_refused_with_an_error_needs_no_ack():
    checker = GuaranteeChecker()
    checker.sent({"msg_type": "INTERRUPT", "msg_id": "i1"})
    checker.received({"msg_type": "ERROR", "ref": "i1", "payload": {"code": "INVALID_MESSAGE"}})
    assert checker.finish() == []
    checker.sent({"msg_type": "INTERRUPT", "msg_id": "i2"})
    assert [v.guarantee for v in checker.finish()] == [3]


def test_a_refused_request_id_can_be_used_again():
    checker = GuaranteeChecker()
    checker.sent(request("r1"))
    checker.received(
        {"msg_type": "ERROR", "request_id": "r1", "payload": {"code": "UNKNOWN_AGENT"}}
    )
    checker.sent(request("r1"))
    assert checker.received(stream("r1", 0)) == []
    # The new request must end with a DONE: it is not the refused one.
    assert [v.guarantee for v in checker.finish()] == [1]
