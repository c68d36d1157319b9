"""`trio-agent demo`: the scripted session, its narration and its pictures."""

from __future__ import annotations

import sys

from trio_agent.cli import demo
from trio_agent.cli.demo import run_demo
from trio_agent.cli.main import build_parser
from trio_agent.observability.timeline import interrupt_stories, load_trace


async def test_the_demo_plays_every_scene_and_tells_each_interrupt(
    autojump_clock, tmp_path, monkeypatch
):
    drawn = []

    def draw(story, path):  # drawing itself is tested in test_timeline.py
        drawn.append(story.msg_id)
        path.write_bytes(b"\x89PNG")
        return path

    monkeypatch.setattr(demo, "draw_timeline", draw)
    said: list[str] = []
    trace = tmp_path / "demo.jsonl"
    trace.write_text("left over from an earlier run\n")
    pictures = await run_demo(trace_path=trace, png_path=tmp_path / "t.png", say=said.append)
    text = "\n".join(said)

    assert "1. stream           REQUEST s1 -> DONE s1 completed (frames=12)" in text
    assert "ACK interrupted=['a']; DONE a interrupted" in text
    assert "b went on: DONE b completed (frames=30)" in text
    assert "3. new request      REQUEST c right after -> DONE c completed (frames=6)" in text
    assert "ACK interrupted=['d', 'e']; DONE f completed (frames=5), not cut" in text
    assert "REQUEST g with timeout_s=0.05 -> DONE g timeout" in text
    assert "guarantees broken" not in text

    # The trace was written afresh, and each INTERRUPT's story was told from it.
    stories = interrupt_stories(load_trace(trace))
    assert [story.cut for story in stories] == [("a",), ("d", "e")]
    for story in stories:
        assert f"---- the story of INTERRUPT {story.msg_id} " in text
    timeout = text.split("---- the timeout of g")[1].splitlines()
    assert "source=deadline" in "\n".join(timeout)
    # The deadline is marked, at 0, before the cleanup it set off.
    deadline = next(i for i, line in enumerate(timeout) if "deadline of g passed" in line)
    cleanup = next(i for i, line in enumerate(timeout) if "cleanup 'save the partial" in line)
    assert timeout[deadline].split()[:3] == ["0", "µs", "trio"]
    assert deadline < cleanup
    assert "(0.05 s after its scope opened)" in timeout[deadline]
    assert "shielded cleanup 'save the partial reply' ended" in text

    assert pictures == [tmp_path / "t.png", tmp_path / "t-all.png"]
    assert drawn == [story.msg_id for story in stories]
    assert f"picture: {tmp_path / 't-all.png'}  (INTERRUPT {stories[1].msg_id})" in text


async def test_without_matplotlib_the_demo_still_narrates(autojump_clock, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "trio_agent.observability.timeline_plot", raising=False)
    said: list[str] = []
    pictures = await run_demo(
        trace_path=tmp_path / "demo.jsonl", png_path=tmp_path / "t.png", say=said.append
    )
    text = "\n".join(said)
    assert pictures == []
    assert "---- the story of INTERRUPT" in text
    assert "no PNG: matplotlib is not installed" in text
    assert "pip install 'trio-agent[demo]'" in text
    assert not (tmp_path / "t.png").exists()


def test_demo_command_line():
    args = build_parser().parse_args(["demo", "--out", "x.png", "--socket", "--no-png"])
    assert (str(args.out), args.socket, args.no_png) == ("x.png", True, True)
    args = build_parser().parse_args(["demo"])
    assert (str(args.out), str(args.trace)) == ("trio-agent-demo.png", "trio-agent-demo.jsonl")
