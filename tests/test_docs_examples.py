"""The runnable examples of docs/cancellation.md: each one checks its own claims."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
from loguru import logger

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "docs" / "examples").glob("*.py"))


def test_there_are_examples():
    assert {p.stem for p in EXAMPLES} >= {
        "never_checkpoints",
        "unbounded_shield",
        "catch_all",
        "async_generator_scope",
        "cancelled_source",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_and_holds(path, monkeypatch, capsys):
    # Each example asserts what it shows, and runs exactly as `python <example>`
    # would, except that the test run's log sinks are left alone.
    monkeypatch.setattr(logger, "remove", lambda *args: None)
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()


DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("page", ["cancellation.md", "testing.md"])
def test_every_relative_link_of_the_teaching_pages_resolves(page):
    text = (DOCS / page).read_text()
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert links
    for link in links:
        assert (DOCS / link).exists(), link


def test_the_trace_quoted_in_cancellation_md_is_the_committed_demo_run():
    """Every trace line the page quotes comes from docs/img/demo-output.txt, the
    narration of the run whose trace and pictures are committed next to it."""
    narration = (DOCS / "img" / "demo-output.txt").read_text().splitlines()
    quoted = [
        line
        for block in re.findall(r"```text\n(.*?)```", (DOCS / "cancellation.md").read_text(), re.S)
        for line in block.splitlines()
        if re.match(r"^\s+[+-]?[\d,]+ µs\s+\S", line)
    ]
    assert len(quoted) > 20
    for line in quoted:
        assert line in narration, line
