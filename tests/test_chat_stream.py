"""The pure parts of a streaming chat call: chunks, upstream error messages, options."""

from __future__ import annotations

import json

import pytest

from trio_agent.agents.openai.agent import ChatOptions
from trio_agent.agents.openai.upstream import (
    Chunk,
    ChunkError,
    Deadlines,
    Phase,
    parse_chunk,
    upstream_message,
)
from trio_agent.protocol.messages import ErrorCode


def chunk(delta, finish_reason=None, **extra):
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice], **extra})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (chunk({"content": "Hel"}), Chunk("Hel")),
        (chunk({"role": "assistant", "content": ""}), Chunk("")),
        (chunk({"role": "assistant"}), Chunk("")),
        (chunk({"content": None, "tool_calls": []}), Chunk("")),
        (chunk({}, "stop"), Chunk("", "stop")),
        (chunk({"content": "x"}, "length"), Chunk("x", "length")),
        (json.dumps({"choices": [], "usage": {"total_tokens": 3}}), Chunk("")),
        (json.dumps({"choices": [{"index": 1, "delta": {"content": "other"}}]}), Chunk("")),
        (json.dumps({"choices": [{"delta": {"content": "no index"}}]}), Chunk("no index")),
    ],
)
def test_chunks(data, expected):
    assert parse_chunk(data) == expected


@pytest.mark.parametrize(
    ("data", "event", "code"),
    [
        ('{"choices": [{"delta": {"content": "unfinished', "message", ErrorCode.UPSTREAM_PROTOCOL),
        ('{"choices": "nope"}', "message", ErrorCode.UPSTREAM_PROTOCOL),
        ('{"choices": [{"delta": {"content": 5}}]}', "message", ErrorCode.UPSTREAM_PROTOCOL),
        ('{"id": "no choices"}', "message", ErrorCode.UPSTREAM_PROTOCOL),
        ("[1, 2]", "message", ErrorCode.UPSTREAM_PROTOCOL),
        ('{"error": {"message": "overloaded", "code": 503}}', "message", ErrorCode.UPSTREAM_ERROR),
        ('{"message": "boom"}', "error", ErrorCode.UPSTREAM_ERROR),
    ],
)
def test_events_that_are_not_chunks(data, event, code):
    with pytest.raises(ChunkError) as raised:
        parse_chunk(data, event)
    assert raised.value.code is code
    assert raised.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "Invalid model", "type": "invalid_request_error"}}, "Invalid model"),
        ({"error": "model 'x' not found"}, "model 'x' not found"),
        ({"message": "bad"}, "bad"),
        ({"detail": "Not Found"}, "Not Found"),
        ({"error": {"code": 500}}, None),
        ("plain", "plain"),
        (None, None),
        ([1], None),
    ],
)
def test_upstream_messages_in_the_usual_shapes(body, message):
    assert upstream_message(body) == message


def test_deadlines_by_phase_and_only_positive_ones():
    deadlines = Deadlines(1, 2, 3)
    assert [deadlines.of(p) for p in Phase] == [1, 2, 3, 3]
    with pytest.raises(ValueError, match="first_token_s"):
        Deadlines(1, 0, 3)


def test_options_become_request_fields():
    options = ChatOptions.parse({"model": "m", "temperature": 0, "max_tokens": 5, "other": 1})
    assert options.request_fields("default") == {"model": "m", "temperature": 0, "max_tokens": 5}
    assert ChatOptions.parse({}).request_fields("default") == {"model": "default"}
    assert ChatOptions.parse({}).request_fields(None) == {}
    assert ChatOptions.parse({"new_conversation": True}).new_conversation


@pytest.mark.parametrize(
    "options",
    [
        {"model": 3},
        {"model": ""},
        {"temperature": "hot"},
        {"temperature": 2.5},
        {"temperature": float("nan")},
        {"temperature": True},
        {"max_tokens": 1.5},
        {"max_tokens": 0},
        {"max_tokens": False},
        {"new_conversation": 1},
    ],
)
def test_bad_options_name_themselves(options):
    from trio_agent.agents import AgentError

    with pytest.raises(AgentError, match=f"options.{next(iter(options))}"):
        ChatOptions.parse(options)
