"""The conversation record, with no I/O: what goes upstream, and what is kept."""

from __future__ import annotations

import pytest

from trio_agent.agents.openai.history import ChatHistory, Turn
from trio_agent.protocol.messages import DoneStatus


def test_messages_open_with_the_system_prompt_and_end_with_the_new_input():
    conversation = ChatHistory("Be brief.")
    assert conversation.messages_for("hi") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert ChatHistory().messages_for("hi") == [{"role": "user", "content": "hi"}]


def test_an_interrupted_reply_is_recorded_as_delivered_and_sent_as_a_plain_message():
    conversation = ChatHistory()
    assert conversation.record("q", "half an ans", DoneStatus.INTERRUPTED)
    assert conversation.turns[-1] == Turn("assistant", "half an ans", DoneStatus.INTERRUPTED)
    assert conversation.turns[-1].interrupted
    assert conversation.messages_for("next") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "half an ans"},
        {"role": "user", "content": "next"},
    ]


def test_a_snapshot_does_not_change_when_turns_are_recorded_later():
    conversation = ChatHistory()
    snapshot = conversation.messages_for("one")
    conversation.record("two", "2", DoneStatus.COMPLETED)
    assert snapshot == [{"role": "user", "content": "one"}]


@pytest.mark.parametrize(
    ("status", "delivered", "recorded"),
    [
        (DoneStatus.COMPLETED, "", True),
        (DoneStatus.INTERRUPTED, "", True),
        (DoneStatus.FAILED, "", False),
        (DoneStatus.TIMEOUT, "", False),
        (DoneStatus.SHUTDOWN, "", False),
        (DoneStatus.FAILED, "some", True),
        (DoneStatus.TIMEOUT, "some", True),
    ],
)
def test_which_endings_are_recorded(status, delivered, recorded):
    conversation = ChatHistory()
    assert conversation.record("q", delivered, status) is recorded
    assert len(conversation.turns) == (2 if recorded else 0)
