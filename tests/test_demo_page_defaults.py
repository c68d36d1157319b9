"""The demo page's reply options start at the lorem agent's own defaults, the ones its
description (what SESSION lists) states; the browser tests check the page shows them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from trio_agent.agents import describe, lorem
from trio_agent.agents.builtin import LOREM_WORDS, LOREM_WORDS_PER_S
from trio_agent.testing.wire import connect

INDEX = (
    Path(__file__).resolve().parent.parent / "trio_agent/server/web/static/demo/index.html"
).read_text(encoding="utf-8")


def field_default(field_id: str) -> str:
    tag = re.search(rf'<input id="{field_id}"[^>]*>', INDEX, re.S)
    assert tag is not None, field_id
    value = re.search(r'\svalue="([^"]*)"', tag.group(0))
    assert value is not None, tag.group(0)
    return value.group(1)


def test_the_description_states_the_defaults_lorem_uses():
    assert f"words={LOREM_WORDS}, words_per_s={LOREM_WORDS_PER_S};" in describe(lorem)


def test_the_page_fields_start_at_lorems_defaults():
    assert field_default("words") == str(LOREM_WORDS)
    assert field_default("speed") == str(LOREM_WORDS_PER_S)


async def test_lorem_without_options_sends_its_default_words_at_its_default_pace(
    start_server, autojump_clock
):
    server = await start_server({"lorem": lorem})
    async with connect(server, "memory") as client:
        await client.request("r1", "defaults, please")
        start = trio.current_time()
        frames = await client.until_done("r1")
        elapsed = trio.current_time() - start
    streams = [f for f in frames if f["msg_type"] == "STREAM"]
    assert len(streams) == LOREM_WORDS == frames[-1]["payload"]["frames"]
    # Paced: one interval between each word and the next.
    assert elapsed == pytest.approx((LOREM_WORDS - 1) / LOREM_WORDS_PER_S, rel=0.05)
