"""Reading traces back: picking an interrupt's story, telling it, drawing it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from trio_agent.observability.timeline import (
    describe,
    interrupt_stories,
    load_trace,
    narrate,
    narrate_events,
    pick_story,
    timeout_story,
)
from trio_agent.observability.timeline_plot import PlotUnavailable, draw_timeline

ROOT = Path(__file__).resolve().parent.parent


def ev(t_us, event, request=None, task="reader", session="s1", **fields):
    return {
        "t_us": t_us,
        "event": event,
        "session": session,
        "request": request,
        "task": task,
        **fields,
    }


def a_trace():
    """Two sessions; in s1, r1 streams, INTERRUPT c3 cuts it while r2 goes on,
    then c5 interrupts everything (only r2 is left)."""
    return [
        ev(0, "session_opened"),
        ev(0, "session_opened", session="s2"),
        ev(10, "scope_opened", "r1", "request r1", agent="lorem", timeout_s=300.0),
        ev(12, "scope_opened", "r2", "request r2", agent="lorem", timeout_s=300.0),
        *[ev(20 + i, "stream_queued", "r1", "request r1", seq=i) for i in range(10)],
        *[ev(40 + i, "stream_written", "r1", "writer", seq=i) for i in range(4)],
        ev(45, "stream_queued", "r2", "request r2", seq=0),
        ev(90, "interrupt_read", "r1", msg_id="c3", reason="USER_NEW_INPUT"),
        ev(91, "interrupt_read", "x", session="s2", msg_id="c3", reason="USER_NEW_INPUT"),
        ev(95, "scope_cancelled", "r1", by="c3", status="interrupted", reason="USER_NEW_INPUT"),
        ev(96, "stream_discarded", "r1", count=5, first_seq=5, last_seq=9),
        ev(98, "ack_queued", "r1", ref="c3", interrupted=["r1"]),
        ev(99, "done_queued", "r1", lane="priority", status="interrupted"),
        ev(110, "stream_written", "r1", "writer", seq=4),
        ev(120, "ack_written", "r1", "writer", ref="c3", latency_us=30),
        ev(
            130,
            "cancel_delivered",
            "r1",
            "request r1",
            source="explicit",
            reason="INTERRUPT c3 (USER_NEW_INPUT)",
            source_task="reader",
            checkpoint="sleep",
            stack=["agents.py:170 in _paced"],
        ),
        ev(135, "done_written", "r1", "writer", status="interrupted", interrupted=True, frames=5),
        ev(140, "scope_closed", "r1", "request r1", outcome="cancelled", status="interrupted"),
        ev(150, "stream_written", "r2", "writer", seq=0),
        ev(300, "interrupt_read", None, msg_id="c5", reason="STOP"),
        ev(301, "scope_cancelled", "r2", by="c5", status="interrupted", reason="STOP"),
        ev(302, "ack_queued", None, ref="c5", interrupted=["r2"]),
        ev(310, "ack_written", None, "writer", ref="c5", latency_us=10),
        ev(320, "scope_closed", "r2", "request r2", outcome="cancelled", status="interrupted"),
        ev(330, "done_written", "r2", "writer", status="interrupted", interrupted=True, frames=1),
        ev(400, "interrupt_read", "ghost", msg_id="c9", reason="USER_NEW_INPUT"),
        ev(401, "ack_queued", "ghost", ref="c9", interrupted=[]),
        ev(405, "ack_written", "ghost", "writer", ref="c9", latency_us=5),
    ]


def test_every_interrupt_has_a_story_in_its_own_session():
    stories = interrupt_stories(a_trace())
    assert [(s.session, s.msg_id, s.cut) for s in stories] == [
        ("s1", "c3", ("r1",)),
        ("s2", "c3", ()),
        ("s1", "c5", ("r2",)),
        ("s1", "c9", ()),
    ]


def test_a_story_runs_from_a_few_frames_before_to_the_end_of_what_it_cut():
    story = pick_story(a_trace(), request_id="r1")
    assert story.msg_id == "c3"
    assert story.read_us == 90
    kinds = [e["event"] for e in story.events]
    assert kinds[-1] == "scope_closed"  # the last thing r1 does
    assert story.events[0]["t_us"] < 90
    before = story.events[: kinds.index("interrupt_read")]
    assert sum(e["event"].startswith("stream_") and e["request"] == "r1" for e in before) == 6
    assert {e["session"] for e in story.events} == {"s1"}
    assert story.lanes() == ["reader", "writer", "request r1", "request r2"]


def test_milestones_are_in_time_order_and_relative_to_the_read():
    story = pick_story(a_trace(), msg_id="c3")
    assert [(label, us) for label, us, _ in story.milestones()] == [
        ("scope of r1 cancelled", 5),
        ("INTERRUPT_ACK written", 30),
        ("Cancelled out of r1's agent", 40),
        ("DONE of r1 written", 45),
        ("scope of r1 closed", 50),
    ]


def test_pick_story_defaults_to_the_first_interrupt_that_cut_something():
    assert pick_story(a_trace()).msg_id == "c3"
    assert pick_story(a_trace(), request_id="r2").msg_id == "c5"
    assert pick_story(a_trace(), msg_id="c9").cut == ()


def test_pick_story_says_what_the_trace_holds():
    with pytest.raises(LookupError, match=r"cut request 'nope'; interrupted requests: r1, r2"):
        pick_story(a_trace(), request_id="nope")
    with pytest.raises(LookupError, match="no INTERRUPT"):
        pick_story([ev(0, "session_opened")])


def test_narration_tells_the_story_and_folds_runs_of_frames():
    text = narrate(pick_story(a_trace(), request_id="r1"))
    assert "INTERRUPT c3 (USER_NEW_INPUT) for request r1, session s1" in text
    assert "cut: r1" in text
    assert re.search(r"scope of r1 cancelled +\+5 µs\n", text)
    assert "STREAM r1 seq=0..3 written" in text  # four in a row, one line
    assert "5 queued STREAM frames of r1 discarded (seq 5..9): never sent" in text
    assert "INTERRUPT_ACK for c3 written, 30 µs after its INTERRUPT was read" in text
    assert (
        "Cancelled out of r1's agent (raised at sleep in agents.py:170 in _paced); "
        "source=explicit, from reader" in text
    )
    lines = text.splitlines()
    read = next(i for i, line in enumerate(lines) if "INTERRUPT c3 read" in line)
    assert lines[read].split()[0] == "0"
    assert lines[read + 1].split()[0] == "+5"


def test_an_interrupt_that_cut_nothing_says_so():
    text = narrate(pick_story(a_trace(), msg_id="c9"))
    assert "cut: nothing (no running request matched)" in text
    assert "INTERRUPT_ACK for c9 written" in text


def test_describe_shows_unknown_or_incomplete_events_raw():
    assert (
        describe(ev(0, "from_the_future", "r1", x=1)) == "from_the_future {'request': 'r1', 'x': 1}"
    )
    assert describe(ev(0, "done_written", "r1")).startswith("done_written")


def test_load_trace_names_the_bad_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(ev(0, "session_opened")) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"t.jsonl:3: not JSON"):
        load_trace(path)
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:1: not a trace event"):
        load_trace(path)


def test_draw_timeline_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = draw_timeline(pick_story(a_trace()), tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_there_is_no_png_and_a_clear_reason(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "trio_agent.observability.timeline_plot", raising=False)
    with pytest.raises(PlotUnavailable, match=r"matplotlib is not installed.*trio-agent\[demo\]"):
        draw_timeline(pick_story(a_trace()), tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()


@pytest.fixture
def plot_timeline():
    spec = importlib.util.spec_from_file_location(
        "plot_timeline", ROOT / "scripts/plot_timeline.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_plot_timeline_script(plot_timeline, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(e) + "\n" for e in a_trace()))
    assert plot_timeline([str(trace), "--list"]) == 0
    assert "c5         session s1  cut: r2" in capsys.readouterr().out

    assert plot_timeline([str(trace), "--request", "r2", "--out", str(tmp_path / "r2.png")]) == 0
    out = capsys.readouterr().out
    assert "INTERRUPT c5 (STOP) for all requests" in out
    assert f"picture: {tmp_path / 'r2.png'}" in out
    assert (tmp_path / "r2.png").exists()

    assert plot_timeline([str(trace), "--request", "zz"]) == 1
    assert "no INTERRUPT in the trace cut request 'zz'" in capsys.readouterr().err


# ---------------------------------------------------------------- the words and the marks


def test_one_discarded_frame_reads_in_the_singular_with_its_one_seq():
    one = ev(96, "stream_discarded", "r1", count=1, first_seq=6, last_seq=6)
    assert describe(one) == "1 queued STREAM frame of r1 discarded (seq 6): never sent"
    two = ev(96, "stream_discarded", "r1", count=2, first_seq=6, last_seq=7)
    assert describe(two) == "2 queued STREAM frames of r1 discarded (seq 6..7): never sent"


def a_timeout(timeout_s: float = 0.05) -> list[dict]:
    """Request g runs out of time at 51,000 µs (its scope opened at 1,000)."""
    task = "request g"
    return [
        ev(1_000, "scope_opened", "g", task, agent="narrator", timeout_s=timeout_s),
        ev(40_000, "stream_queued", "g", task, seq=4),
        ev(51_300, "cleanup_started", "g", task, what="save", timeout_s=0.25),
        ev(53_500, "cleanup_ended", "g", task, what="save", timed_out=False),
        ev(53_600, "cancel_delivered", "g", task, source="deadline", checkpoint="sleep"),
        ev(53_700, "scope_closed", "g", task, outcome="cancelled", status="timeout"),
        ev(54_000, "done_written", "g", "writer", status="timeout", frames=5),
    ]


def test_the_timeout_story_marks_when_the_deadline_passed():
    story = timeout_story([*a_timeout(), ev(52_000, "stream_queued", "h", "request h", seq=0)], "g")
    assert [e["event"] for e in story] == [
        "scope_opened",
        "stream_queued",
        "deadline_passed",  # before the cleanup it set off, not after
        "cleanup_started",
        "cleanup_ended",
        "cancel_delivered",
        "scope_closed",
        "done_written",
    ]
    deadline = story[2]
    assert deadline["t_us"] == 51_000
    lines = narrate_events(story, zero_us=deadline["t_us"])
    assert re.fullmatch(
        r" +0 µs  trio clock +deadline of g passed \(0.05 s after its scope opened\): "
        r"Trio's clock cancels the scope",
        lines[2],
    )
    assert lines[3].split()[0] == "+300"  # the cleanup began 300 µs after it


def test_a_request_that_ended_before_its_deadline_gets_no_mark():
    assert "deadline_passed" not in [e["event"] for e in timeout_story(a_timeout(60.0), "g")]
    assert timeout_story(a_trace(), "nobody") == []


def zoom_label_boxes(figure) -> list:
    """The pixel boxes of the labels drawn in the zoomed (lower) panel."""
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    zoom = figure.axes[1]
    xmin, xmax = sorted(zoom.get_xlim())
    return [
        (text.get_text(), text.get_window_extent(renderer))
        for text in zoom.texts
        if text.get_text() and xmin <= text.xy[0] <= xmax
    ]


def test_labels_in_the_zoomed_panel_never_overlap():
    pytest.importorskip("matplotlib")
    from trio_agent.observability.timeline_plot import build_figure

    # r1's ACK and DONE are queued 1 µs apart, the cancel 3 µs before: one spot.
    for story in [pick_story(a_trace(), msg_id="c3"), pick_story(a_trace(), msg_id="c5")]:
        boxes = zoom_label_boxes(build_figure(story))
        names = [name for name, _ in boxes]
        assert {"read", "ACK\nqueued"} <= set(names), names
        for i, (name, box) in enumerate(boxes):
            for other_name, other in boxes[i + 1 :]:
                assert not box.overlaps(other), f"{name!r} overlaps {other_name!r}"


def test_the_committed_demo_trace_draws_without_overlapping_labels():
    pytest.importorskip("matplotlib")
    from trio_agent.observability.timeline_plot import build_figure

    for story in interrupt_stories(load_trace(ROOT / "docs/img/demo-trace.jsonl")):
        boxes = zoom_label_boxes(build_figure(story))
        for i, (name, box) in enumerate(boxes):
            assert not any(box.overlaps(other) for _, other in boxes[i + 1 :]), name
