"""The pure wire layer: every client frame parses to a typed message or a coded error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_agent.protocol.messages import (
    DEFAULT_INTERRUPT_REASON,
    DoneMessage,
    DonePayload,
    DoneStatus,
    ErrorCode,
    HeartbeatMessage,
    InterruptMessage,
    ProtocolError,
    RequestMessage,
    StreamMessage,
    StreamPayload,
    encode,
    parse_client_message,
    parse_server_message,
)


def code_of(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    return info.value


def test_request_parses_with_defaults():
    msg = parse_client_message(
        json.dumps(
            {
                "msg_type": "REQUEST",
                "msg_id": "m1",
                "request_id": "r-1.a:b_c",
                "payload": {"input": "hi"},
            }
        )
    )
    assert isinstance(msg, RequestMessage)
    assert msg.request_id == "r-1.a:b_c"
    assert msg.payload.input == "hi"
    assert msg.payload.agent is None
    assert msg.payload.options == {}
    assert msg.payload.timeout_s is None


def test_interrupt_defaults_to_all_and_user_new_input():
    msg = parse_client_message('{"msg_type": "INTERRUPT", "msg_id": "i1"}')
    assert isinstance(msg, InterruptMessage)
    assert msg.request_id is None
    assert msg.payload.reason == DEFAULT_INTERRUPT_REASON == "USER_NEW_INPUT"


def test_interrupt_with_null_request_id_means_all():
    msg = parse_client_message('{"msg_type": "INTERRUPT", "msg_id": "i1", "request_id": null}')
    assert isinstance(msg, InterruptMessage)
    assert msg.request_id is None


def test_heartbeat_parses():
    assert isinstance(
        parse_client_message('{"msg_type": "HEARTBEAT", "msg_id": "h"}'), HeartbeatMessage
    )


def test_unknown_fields_are_ignored_for_forward_compatibility():
    msg = parse_client_message('{"msg_type": "HEARTBEAT", "msg_id": "h", "future": 1}')
    assert isinstance(msg, HeartbeatMessage)


@pytest.mark.parametrize("raw", ["", "{", "not json", '{"a": NaN}', '{"a": Infinity}', b"\xff\xfe"])
def test_invalid_json(raw):
    assert code_of(raw).code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ([], "an array"),
        ("text", "a string"),
        ({}, "no msg_type"),
        ({"msg_type": 3}, "msg_type not a string"),
        (
            {"msg_type": "REQUEST", "msg_id": "m", "payload": {"input": "x"}},
            "REQUEST without request_id",
        ),
        ({"msg_type": "REQUEST", "request_id": "r", "payload": "x"}, "payload not an object"),
        ({"msg_type": "REQUEST", "request_id": "r", "payload": {}}, "no input"),
        ({"msg_type": "REQUEST", "request_id": "r", "payload": {"input": 5}}, "input not a string"),
        (
            {"msg_type": "REQUEST", "request_id": "r", "payload": {"input": "x", "options": []}},
            "options",
        ),
        (
            {"msg_type": "REQUEST", "request_id": "r", "payload": {"input": "x", "timeout_s": -1}},
            "timeout",
        ),
        ({"msg_type": "REQUEST", "request_id": "has space", "payload": {"input": "x"}}, "bad id"),
        ({"msg_type": "REQUEST", "request_id": "x" * 65, "payload": {"input": "x"}}, "long id"),
        ({"msg_type": "REQUEST", "request_id": "", "payload": {"input": "x"}}, "empty id"),
        ({"msg_type": "REQUEST", "request_id": 7, "payload": {"input": "x"}}, "id not a string"),
        ({"msg_type": "INTERRUPT"}, "INTERRUPT without msg_id"),
        ({"msg_type": "INTERRUPT", "msg_id": "i", "request_id": "a b"}, "INTERRUPT bad id"),
        ({"msg_type": "INTERRUPT", "msg_id": "i", "payload": {"reason": 1}}, "reason not a string"),
        ({"msg_type": "HEARTBEAT"}, "HEARTBEAT without msg_id"),
    ],
)
def test_invalid_message(frame, why):
    assert code_of(json.dumps(frame)).code is ErrorCode.INVALID_MESSAGE, why


@pytest.mark.parametrize(
    "msg_type", ["STREAM", "DONE", "INTERRUPT_ACK", "SESSION", "ERROR", "request", "FOO"]
)
def test_unknown_msg_type(msg_type):
    err = code_of(json.dumps({"msg_type": msg_type, "msg_id": "m9", "request_id": "r9"}))
    assert err.code is ErrorCode.UNKNOWN_MSG_TYPE
    assert (err.ref, err.request_id) == ("m9", "r9")


def test_error_carries_ref_and_request_id_when_readable():
    err = code_of(
        json.dumps({"msg_type": "REQUEST", "msg_id": "m1", "request_id": "r1", "payload": 3})
    )
    assert (err.ref, err.request_id) == ("m1", "r1")
    err = code_of(
        json.dumps({"msg_type": "REQUEST", "msg_id": 5, "request_id": ["x"], "payload": 3})
    )
    assert (err.ref, err.request_id) == (None, None)


def test_server_messages_round_trip_and_leave_out_none():
    stream = StreamMessage(
        msg_id="s1", session_id="S", request_id="r", ts=1, payload=StreamPayload(seq=0, delta="a")
    )
    assert parse_server_message(encode(stream)) == stream
    done = DoneMessage(
        msg_id="s2",
        session_id="S",
        request_id="r",
        ts=2,
        payload=DonePayload(status=DoneStatus.COMPLETED, interrupted=False, frames=1),
    )
    text = encode(done)
    assert "reason" not in text
    assert "error" not in text
    assert parse_server_message(text) == done


@given(st.one_of(st.text(), st.binary()))
def test_any_input_gives_a_message_or_a_coded_error(raw):
    try:
        parse_client_message(raw)
    except ProtocolError as exc:
        error = exc
    else:
        return
    assert error.code in ErrorCode


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {"msg_type": st.sampled_from(["REQUEST", "INTERRUPT", "HEARTBEAT", "X"]) | json_values},
        optional={"msg_id": json_values, "request_id": json_values, "payload": json_values},
    )
)
def test_any_json_object_gives_a_message_or_a_coded_error(frame):
    try:
        parse_client_message(json.dumps(frame))
    except ProtocolError as exc:
        error = exc
    else:
        return
    assert error.code in (ErrorCode.INVALID_MESSAGE, ErrorCode.UNKNOWN_MSG_TYPE)


def test_a_session_frame_without_default_agent_or_idle_timeout_parses():
    """The server leaves out every None; its own parser must accept the result."""
    from trio_agent import AgentServer, ServerConfig
    from trio_agent.protocol.messages import SessionMessage, encode, parse_server_message

    server = AgentServer(ServerConfig(idle_timeout_s=0), {"mine": lambda request, stream: None})
    payload = server._session_payload
    assert payload.default_agent is None
    text = encode(SessionMessage(msg_id="s0", session_id="x", ts=0, payload=payload))
    assert "default_agent" not in text
    assert "idle_timeout_s" not in text
    assert parse_server_message(text).payload == payload


# --------------------------------------------------------------------------- more properties

request_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
msg_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
#: What ``options`` may hold: JSON whose integers fit in 64 bits (docs/protocol.md).
option_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.one_of(
        st.fixed_dictionaries(
            {
                "msg_type": st.just("REQUEST"),
                "request_id": request_ids,
                "payload": st.fixed_dictionaries(
                    {"input": st.text()},
                    optional={
                        "agent": st.text(max_size=20),
                        "options": st.dictionaries(st.text(max_size=5), option_values, max_size=3),
                        "timeout_s": st.floats(min_value=0.001, max_value=1e6),
                    },
                ),
            },
            optional={"msg_id": msg_ids},
        ),
        st.fixed_dictionaries(
            {"msg_type": st.just("INTERRUPT"), "msg_id": msg_ids},
            optional={
                "request_id": request_ids | st.none(),
                "payload": st.fixed_dictionaries({}, optional={"reason": st.text(max_size=256)}),
            },
        ),
        st.fixed_dictionaries({"msg_type": st.just("HEARTBEAT"), "msg_id": msg_ids}),
    ),
    st.booleans(),
)
def test_every_valid_message_parses_to_what_was_sent(frame, ascii_only):
    """Whatever the JSON encoder (ASCII escapes or raw UTF-8), a valid frame parses
    to a message holding exactly the fields sent."""
    message = parse_client_message(json.dumps(frame, ensure_ascii=ascii_only))
    assert message.msg_type == frame["msg_type"]
    assert message.msg_id == frame.get("msg_id")
    assert message.request_id == frame.get("request_id")
    if isinstance(message, RequestMessage):
        assert message.payload.input == frame["payload"]["input"]


@given(st.one_of(st.text(), st.binary()))
def test_whatever_parses_can_be_sent_back(raw):
    """Every string a parsed message holds is real Unicode, so echoing any of it
    (an ACK's ref, a reason, a DONE's ref) can never fail to encode."""
    try:
        message = parse_client_message(raw)
    except ProtocolError:
        return
    message.model_dump_json().encode("utf-8")


@pytest.mark.parametrize(
    "escape", ["\\ud800", "\\udfff", "\\uDBFF", "x\\ud83d", "\\ude00y", "\\ud83d\\ud83d"]
)
@pytest.mark.parametrize("where", ["msg_id", "reason", "key"])
def test_a_lone_surrogate_escape_anywhere_is_invalid_json(escape, where):
    frames = {
        "msg_id": '{"msg_type": "INTERRUPT", "msg_id": "%s"}',
        "reason": '{"msg_type": "INTERRUPT", "msg_id": "i", "payload": {"reason": "%s"}}',
        "key": '{"msg_type": "HEARTBEAT", "msg_id": "h", "payload": {"%s": 1}}',
    }
    assert code_of(frames[where] % escape).code is ErrorCode.INVALID_JSON


def test_a_surrogate_pair_escape_is_fine():
    raw = '{"msg_type": "INTERRUPT", "msg_id": "i", "payload": {"reason": "\\ud83d\\ude00"}}'
    msg = parse_client_message(raw)
    assert msg.payload.reason == "\U0001f600"


@given(st.integers(1, 100_000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_a_coded_error_not_a_crash(depth, opener):
    assert code_of(opener * depth).code in (ErrorCode.INVALID_JSON, ErrorCode.INVALID_MESSAGE)


@settings(max_examples=50)
@given(json_values, msg_ids, request_ids)
def test_a_refused_frame_names_its_msg_id_and_request_id(payload, msg_id, request_id):
    frame = {"msg_type": "NOPE", "msg_id": msg_id, "request_id": request_id, "payload": payload}
    err = code_of(json.dumps(frame))
    assert (err.ref, err.request_id) == (msg_id, request_id)
