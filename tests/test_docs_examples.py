"""The runnable examples of docs/cancellation.md: each one checks its own claims."""

from __future__ import annotations

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
