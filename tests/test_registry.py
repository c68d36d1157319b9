"""The pure request book: admission, interrupt decisions, exactly-once endings."""

from __future__ import annotations

import pytest
import trio

from trio_agent.protocol.messages import DoneStatus, ErrorCode, TargetOutcome
from trio_agent.server.registry import AdmissionRefused, RequestPhase, RequestRegistry


def admit(reg: RequestRegistry, rid: str):
    return reg.admit(rid, agent="lorem", scope=trio.CancelScope())


def test_duplicate_while_running_or_ending_then_reusable_after_done_written():
    reg = RequestRegistry(max_running=4)
    record = admit(reg, "a")
    with pytest.raises(AdmissionRefused) as info:
        admit(reg, "a")
    assert info.value.code is ErrorCode.DUPLICATE_REQUEST_ID
    assert reg.end(record, DoneStatus.COMPLETED)
    with pytest.raises(AdmissionRefused):
        admit(reg, "a")  # DONE queued but not written yet
    reg.done_written(record)
    assert admit(reg, "a").phase is RequestPhase.RUNNING


def test_too_many_counts_running_only():
    reg = RequestRegistry(max_running=2)
    first = admit(reg, "a")
    admit(reg, "b")
    with pytest.raises(AdmissionRefused) as info:
        admit(reg, "c")
    assert info.value.code is ErrorCode.TOO_MANY_REQUESTS
    reg.interrupt("a", reason="x", msg_id="i1")
    assert first.phase is RequestPhase.ENDING
    admit(reg, "c")  # an interrupted request no longer counts, even before its DONE is written


def test_first_terminal_decision_wins():
    reg = RequestRegistry(max_running=2)
    record = admit(reg, "a")
    decision = reg.interrupt("a", reason="USER_NEW_INPUT", msg_id="i1")
    assert decision.cut == [record]
    assert not reg.end(record, DoneStatus.COMPLETED)
    assert not reg.end(record, DoneStatus.TIMEOUT)
    assert record.status is DoneStatus.INTERRUPTED
    assert record.cancelled_by == "i1"
    assert record.reason == "USER_NEW_INPUT"
    assert reg.running_count == 0


def test_interrupt_named_targets_unknown_and_already_done():
    reg = RequestRegistry(max_running=2)
    record = admit(reg, "a")
    assert reg.interrupt("nope", reason="r", msg_id="i1").targets == {"nope": TargetOutcome.UNKNOWN}
    reg.end(record, DoneStatus.COMPLETED)
    ending = reg.interrupt("a", reason="r", msg_id="i2")
    assert ending.cut == []
    assert ending.targets == {"a": TargetOutcome.ALREADY_DONE}
    reg.done_written(record)
    assert reg.interrupt("a", reason="r", msg_id="i3").targets == {"a": TargetOutcome.ALREADY_DONE}


def test_concurrent_interrupts_cut_a_request_once():
    reg = RequestRegistry(max_running=4)
    admit(reg, "a")
    admit(reg, "b")
    first = reg.interrupt(None, reason="r", msg_id="i1")
    second = reg.interrupt("a", reason="r", msg_id="i2")
    third = reg.interrupt(None, reason="r", msg_id="i3")
    assert first.interrupted_ids == ["a", "b"]
    assert second.cut == []
    assert second.targets == {"a": TargetOutcome.ALREADY_DONE}
    assert third.cut == []
    assert third.targets == {}


def test_interrupt_all_cuts_only_what_runs_now():
    reg = RequestRegistry(max_running=4)
    admit(reg, "a")
    decision = reg.interrupt(None, reason="r", msg_id="i1")
    later = admit(reg, "b")
    assert decision.interrupted_ids == ["a"]
    assert later.phase is RequestPhase.RUNNING


def test_finished_memory_is_bounded():
    reg = RequestRegistry(max_running=1, finished_memory=3)
    for i in range(10):
        record = admit(reg, f"r{i}")
        reg.end(record, DoneStatus.COMPLETED)
        reg.done_written(record)
    assert not reg.has_finished("r6")
    assert all(reg.has_finished(f"r{i}") for i in (7, 8, 9))
    assert reg.interrupt("r0", reason="x", msg_id="i").targets == {"r0": TargetOutcome.UNKNOWN}


def test_end_all_for_shutdown():
    reg = RequestRegistry(max_running=4)
    a, b = admit(reg, "a"), admit(reg, "b")
    reg.end(b, DoneStatus.COMPLETED)
    assert reg.end_all(DoneStatus.SHUTDOWN, reason="bye") == [a]
    assert a.status is DoneStatus.SHUTDOWN
    assert not a.interrupted
