"""docs/protocol.md is the contract: its examples must parse, its tables must be complete."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from trio_agent.config import ServerConfig
from trio_agent.protocol import ErrorCode, parse_client_message, parse_server_message

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
EXAMPLES = re.findall(r"```json\n(.*?)```", DOC, flags=re.S)
CLIENT_TYPES = {"REQUEST", "INTERRUPT"}


def test_there_are_examples_of_every_message():
    kinds = {json.loads(e)["msg_type"] for e in EXAMPLES}
    assert kinds == {
        "REQUEST",
        "INTERRUPT",
        "HEARTBEAT",
        "SESSION",
        "STREAM",
        "DONE",
        "INTERRUPT_ACK",
        "ERROR",
    }


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_parses_as_its_model(example):
    frame = json.loads(example)
    if frame["msg_type"] in CLIENT_TYPES or (
        frame["msg_type"] == "HEARTBEAT" and "session_id" not in frame
    ):
        parse_client_message(example)
    else:
        parse_server_message(example)


def test_every_error_code_is_documented():
    for code in ErrorCode:
        assert f"`{code}`" in DOC, code


def test_every_setting_is_documented():
    for f in fields(ServerConfig):
        assert "`--" + f.name.replace("_", "-") + "`" in DOC, f.name
