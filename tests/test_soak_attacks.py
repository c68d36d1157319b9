"""The soak's attacks run against a real server and count what it answered.

These tests assert no defence: ``scripts/soak.py`` reports whether each bound
held. They check that each attack reaches the server over a real socket, ends
on its own, and files an answer (a status, a close code, an ERROR code) under
its name; and that the raw wire helpers and the report read what they should.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import soak_attacks  # noqa: E402
import soak_http_attacks  # noqa: E402
from soak_behaviours import BEHAVIOURS  # noqa: E402
from soak_client import MAX_MESSAGE_BYTES, Server, Tally  # noqa: E402
from soak_raw import (  # noqa: E402
    CLOSE,
    CONTINUATION,
    TEXT,
    HttpAnswers,
    ServerFrames,
    client_frame,
    parse_responses,
)

TOKEN = "soak-T0ken"


def answers_of(tally: Tally, attack: str) -> dict[str, int]:
    prefix = f"attack {attack}: "
    return {k[len(prefix) :]: v for k, v in tally.counts.items() if k.startswith(prefix)}


def test_every_attack_is_a_behaviour_with_its_own_name():
    names = [b.__name__ for b, _ in BEHAVIOURS]
    assert len(names) == len(set(names))
    for attack in (
        "echoes",
        "log_floods",
        "heartbeat_interrupts",
        "malformed_frames",
        "fragments",
        "pings",
        "rebinds",
        "metrics_pipelines",
        "smuggles",
        "token_names",
        "bad_handshakes",
        "address_hoards",
    ):
        assert attack in names


def test_pipelined_responses_are_told_apart_and_a_101_ends_the_http_part():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    answers = HttpAnswers()
    parse_responses(ok + ok + b"HTTP/1.1 400 Bad", answers)
    assert answers.statuses == [200, 200]
    assert answers.first_body == b"hello"
    upgraded = HttpAnswers()
    parse_responses(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02{}", upgraded
    )
    assert upgraded.statuses == [101]
    assert upgraded.rest == b"\x81\x02{}"


def test_client_frames_are_masked_and_sized_and_a_close_code_is_read():
    assert client_frame(TEXT, b"ab") == b"\x81\x82\x00\x00\x00\x00ab"
    assert client_frame(CONTINUATION, fin=False) == b"\x00\x80\x00\x00\x00\x00"
    assert client_frame(TEXT, b"x" * 200)[1:4] == b"\xfe\x00\xc8"
    frames = ServerFrames()
    frames.feed(bytes([0x80 | CLOSE, 2]) + (1008).to_bytes(2, "big"))
    assert frames.close_code == 1008
    assert frames.ended.is_set()


@pytest.mark.parametrize("kind", ["msg_id", "request_id emoji", "reason emoji"])
def test_an_echo_frame_fits_the_soaks_message_limit(kind):
    frame = soak_attacks.echo_frame(kind)
    assert MAX_MESSAGE_BYTES - 1000 < len(frame) <= MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("attack", "module"),
    [
        ("malformed_frames", soak_attacks),
        ("heartbeat_interrupts", soak_attacks),
        ("log_floods", soak_attacks),
        ("smuggles", soak_http_attacks),
        ("token_names", soak_http_attacks),
        ("bad_handshakes", soak_http_attacks),
        ("metrics_pipelines", soak_http_attacks),
    ],
)
async def test_an_attack_reaches_a_real_server_and_files_its_answer(start_server, attack, module):
    server = await start_server(token=TOKEN, max_message_bytes=MAX_MESSAGE_BYTES)
    tally = Tally()
    with trio.fail_after(30):
        await getattr(module, attack)(Server(server.port, TOKEN), tally, random.Random(3))
    assert answers_of(tally, attack), tally.counts
    assert tally.counts["surprises"] == 0, tally.surprises


async def test_a_rebinding_handshake_goes_to_the_server_without_a_token(start_server):
    guarded = await start_server(token=TOKEN)
    open_server = await start_server()
    tally = Tally()
    with trio.fail_after(30):
        for seed in range(3):
            await soak_http_attacks.rebinds(
                Server(guarded.port, TOKEN, open_server.port), tally, random.Random(seed)
            )
    assert sum(answers_of(tally, "rebinds").values()) >= 3
