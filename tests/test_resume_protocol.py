"""Protocol v1.2's resume messages: their models, and a server that keeps no session.

The server does not keep sessions past their connection yet: its SESSION offers no
``resume``, and a RESUME is refused with RESUME_UNKNOWN and a close (1008), as
``docs/protocol.md`` prescribes for a session the server does not hold.
"""

from __future__ import annotations

import json

import pytest

from trio_agent import agents as builtin
from trio_agent.protocol import (
    CloseCode,
    ErrorCode,
    ProtocolError,
    ResumedMessage,
    ResumeMessage,
    parse_client_message,
    parse_server_message,
)
from trio_agent.testing.wire import connect, only


def resume(**payload: object) -> str:
    return json.dumps(
        {"msg_type": "RESUME", "msg_id": "c1", "session_id": "old-session", "payload": payload}
    )


def test_a_resume_names_the_last_seq_of_each_request():
    message = parse_client_message(
        resume(token="t" * 22, last_seq={"r1": 41, "r2": -1}, last_audio_seq={"r1": 17})
    )
    assert isinstance(message, ResumeMessage)
    assert message.session_id == "old-session"
    assert message.payload.last_seq == {"r1": 41, "r2": -1}
    assert message.payload.last_audio_seq == {"r1": 17}


@pytest.mark.parametrize(
    "payload",
    [
        {"last_seq": {}},  # no token
        {"token": "", "last_seq": {}},
        {"token": "t", "last_seq": {"r1": -2}},
        {"token": "t", "last_seq": {"r1": "41"}},
        {"token": "t", "last_seq": {"r1": True}},
        {"token": "t", "last_seq": {"not an id": 1}},
        {"token": "t" * 129},
    ],
)
def test_a_malformed_resume_is_an_invalid_message(payload):
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(resume(**payload))
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert caught.value.ref == "c1"


def test_a_resume_without_the_old_session_id_is_an_invalid_message():
    raw = json.dumps({"msg_type": "RESUME", "msg_id": "c1", "payload": {"token": "t"}})
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE


def test_resumed_says_what_became_of_each_request_and_the_next_token():
    message = parse_server_message(
        json.dumps(
            {
                "msg_type": "RESUMED",
                "msg_id": "s9",
                "session_id": "old-session",
                "ref": "c1",
                "ts": 1,
                "payload": {
                    "requests": {"r1": "running", "r2": "done"},
                    "interrupts": {"c7": ["r1"]},
                    "resume": {"token": "n" * 22, "window_s": 30},
                },
            }
        )
    )
    assert isinstance(message, ResumedMessage)
    assert message.payload.requests == {"r1": "running", "r2": "done"}
    assert message.payload.interrupts == {"c7": ["r1"]}
    assert message.payload.resume.window_s == 30


async def test_a_server_that_keeps_no_session_refuses_a_resume_and_closes(start_server):
    server = await start_server({"lorem": builtin.lorem}, resume_window_s=0)
    async with connect(server) as c:
        assert "resume" not in c.session["payload"]
        await c.send_raw(resume(token="t" * 22, last_seq={"r1": 3}))
        error = only(await c.recv_until(lambda f: f["msg_type"] == "ERROR"), "ERROR")[0]
        assert error["payload"]["code"] == "RESUME_UNKNOWN"
        assert error["ref"] == "c1"
        assert await c.until_closed() == CloseCode.POLICY_VIOLATION
