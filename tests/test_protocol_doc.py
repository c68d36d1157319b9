"""docs/protocol.md is the contract: its examples must parse, its tables must be complete."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from trio_agent.protocol.audio import AudioHeader, decode_audio_frame
from trio_agent.protocol.messages import ErrorCode, parse_client_message, parse_server_message
from trio_agent.server.config import ServerConfig

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
EXAMPLES = re.findall(r"```json\n(.*?)```", DOC, flags=re.S)
CLIENT_TYPES = {"REQUEST", "INTERRUPT", "RESUME"}


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
        "AUDIO",
        "RESUME",
        "RESUMED",
    }


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_parses_as_its_model(example):
    frame = json.loads(example)
    if frame["msg_type"] == "AUDIO":
        AudioHeader.model_validate_json(example)
    elif frame["msg_type"] in CLIENT_TYPES or (
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


def test_the_byte_level_audio_example_decodes_to_the_header_example():
    dump = DOC.split("That same frame byte by byte", 1)[1].split("```text\n", 1)[1].split("```")[0]
    data = bytes.fromhex("".join(line[10:58] for line in dump.splitlines()))
    header, samples = decode_audio_frame(data)
    example = next(e for e in EXAMPLES if json.loads(e)["msg_type"] == "AUDIO")
    assert header == AudioHeader.model_validate_json(example)
    assert samples == b"\x00\x00\xe8\x03\x18\xfc\xff\x7f"  # 0, 1000, -1000, 32767
