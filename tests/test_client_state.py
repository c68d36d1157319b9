"""The client state as a pure state machine: no socket, no Trio, frame by frame."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_server import session_payload

from trio_agent.client.state import (
    Acknowledged,
    Chunk,
    ClientState,
    HeartbeatAnswered,
    InterruptRefused,
    Opened,
    ProtocolBreach,
    RequestUpdated,
    UnclaimedError,
)


def frame(msg_type: str, **fields: Any) -> str:
    return json.dumps({"msg_type": msg_type, "msg_id": "s", "session_id": "s1", "ts": 0, **fields})


def stream(request_id: str, seq: int, delta: str) -> str:
    return frame("STREAM", request_id=request_id, payload={"seq": seq, "delta": delta})


def done(request_id: str, frames: int, status: str = "completed", **extra: Any) -> str:
    payload = {"status": status, "interrupted": status == "interrupted", "frames": frames, **extra}
    return frame("DONE", request_id=request_id, payload=payload)


def ack(ref: str, interrupted: list[str], targets: dict[str, str] | None = None) -> str:
    payload = {
        "interrupted": interrupted,
        "interrupted_count": len(interrupted),
        "reason": "USER_NEW_INPUT",
        "targets": targets or {},
    }
    return frame("INTERRUPT_ACK", ref=ref, payload=payload)


def opened() -> ClientState:
    client_state = ClientState()
    events = client_state.receive(frame("SESSION", payload=session_payload()))
    assert [type(e) for e in events] == [Opened]
    return client_state


def send(client_state: ClientState, *outgoing):
    for item in outgoing:
        client_state.sending(item)


def test_chunks_are_buffered_and_the_done_ends_the_request():
    c = opened()
    state, out = c.request("hi", agent="echo", options={"words_per_s": 0}, request_id="r1")
    send(c, out)
    assert json.loads(out.text) == {
        "msg_type": "REQUEST",
        "msg_id": out.msg_id,
        "request_id": "r1",
        "ts": json.loads(out.text)["ts"],
        "payload": {"input": "hi", "agent": "echo", "options": {"words_per_s": 0}},
    }
    assert c.receive(stream("r1", 0, "h")) == [RequestUpdated(state)]
    c.receive(stream("r1", 1, "i"))
    assert list(state.chunks) == [Chunk(0, "h"), Chunk(1, "i")]
    assert c.receive(done("r1", 2)) == [RequestUpdated(state)]
    assert state.done == state.server_done
    assert state.done is not None
    assert (state.done.status, state.done.local) == ("completed", False)
    assert state.settled
    assert "r1" not in c.requests
    # The chunks stay for the consumer after the DONE.
    assert len(state.chunks) == 2


def test_interrupt_cuts_locally_before_any_frame_and_stale_frames_are_counted():
    c = opened()
    state, out = c.request("q", request_id="r1")
    send(c, out)
    c.receive(stream("r1", 0, "a"))
    c.receive(stream("r1", 1, "b"))
    interrupt, out = c.interrupt("r1")
    # Cut before the INTERRUPT is even sent: unconsumed chunks are dropped.
    assert state.ended
    assert not state.chunks
    assert state.done is not None
    assert (state.done.status, state.done.interrupted, state.done.frames, state.done.local) == (
        "interrupted",
        True,
        2,
        True,
    )
    assert state.cut_by == interrupt.msg_id
    assert json.loads(out.text)["request_id"] == "r1"
    send(c, out)
    assert c.receive(stream("r1", 2, "c")) == []
    assert state.stale_dropped == interrupt.stale_dropped == 1
    assert state.parts == ["a", "b"]
    events = c.receive(ack(interrupt.msg_id, ["r1"]))
    assert len(events) == 1
    assert isinstance(events[0], Acknowledged)
    assert events[0].interrupt is interrupt
    assert c.receive(done("r1", 3, "interrupted", reason="USER_NEW_INPUT")) == [
        RequestUpdated(state)
    ]
    assert state.server_done is not None
    assert state.server_done.frames == 3
    assert state.done.local  # what the user saw does not change


def test_interrupt_all_cuts_only_what_has_not_ended():
    c = opened()
    one, out1 = c.request("1")
    two, out2 = c.request("2")
    send(c, out1, out2)
    c.receive(done(one.request_id, 0))
    interrupt, out = c.interrupt()
    assert interrupt.cut == (two,)
    assert "request_id" not in json.loads(out.text)
    # A request sent after the interrupt-all is not cut.
    three, out3 = c.request("3")
    send(c, out, out3)
    assert not three.ended


def test_errors_are_matched_by_ref():
    c = opened()
    state, out = c.request("q", agent="nope")
    interrupt, out2 = c.interrupt("ghost")
    send(c, out, out2)
    events = c.receive(
        frame(
            "ERROR",
            ref=out.msg_id,
            request_id=state.request_id,
            payload={"code": "UNKNOWN_AGENT", "message": "no"},
        )
    )
    assert events == [RequestUpdated(state)]
    assert state.error is not None
    assert state.error.code == "UNKNOWN_AGENT"
    assert state.ended
    assert state.settled
    assert state.request_id not in c.requests
    events = c.receive(
        frame("ERROR", ref=interrupt.msg_id, payload={"code": "INTERNAL_ERROR", "message": "x"})
    )
    assert [type(e) for e in events] == [InterruptRefused]
    events = c.receive(frame("ERROR", payload={"code": "INVALID_JSON", "message": "x"}))
    assert [type(e) for e in events] == [UnclaimedError]


def test_heartbeat_replies_name_their_heartbeat():
    c = opened()
    out = c.heartbeat()
    send(c, out)
    assert c.receive(frame("HEARTBEAT", ref=out.msg_id, payload={})) == [
        HeartbeatAnswered(out.msg_id)
    ]


@pytest.mark.parametrize(
    ("raw", "guarantee", "words"),
    [
        ("not json", None, "not JSON"),
        ("[1]", None, "not a JSON object"),
        (frame("HELLO"), None, "unknown server msg_type"),
        (frame("SESSION", payload=session_payload()), None, "a second SESSION"),
        (frame("STREAM", request_id="r1", payload={"seq": 0}), None, "malformed"),
        (stream("stranger", 0, "x"), 8, "never sent"),
        (ack("nope", []), 3, "never sent"),
    ],
)
def test_breaches_are_reported(raw, guarantee, words):
    c = opened()
    events = c.receive(raw)
    breaches = [e for e in events if isinstance(e, ProtocolBreach)]
    assert any(b.guarantee == guarantee and words in b.message for b in breaches), breaches


def test_the_first_frame_must_be_session():
    c = ClientState()
    events = c.receive(stream("r1", 0, "x"))
    assert any(isinstance(e, ProtocolBreach) and "not SESSION" in e.message for e in events)


def test_request_ids():
    c = opened()
    first, _ = c.request("a")
    c.request("b", request_id="req-2")
    third, _ = c.request("c")
    assert (first.request_id, third.request_id) == ("req-1", "req-3")  # req-2 is taken
    with pytest.raises(ValueError, match="still in use"):
        c.request("d", request_id="req-1")
    with pytest.raises(ValueError, match="request_id"):
        c.request("d", request_id="")
    with pytest.raises(ValueError, match="invalid request"):
        c.request(123)  # type: ignore[arg-type]
    c.forget(first)
    again, _ = c.request("a", request_id="req-1")
    assert again is not first
