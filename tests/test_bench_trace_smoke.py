"""The trace benchmark runs end to end (tiny counts) and reports every figure.

It asserts no timing: only that the baseline could be built from this tree (its
hook calls found and removed), that every variant ran both workloads, and that the
table and the JSON have every row.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import bench_trace  # noqa: E402

from tests.script_runs import run_script  # noqa: E402

TINY = bench_trace.SMOKE

METRICS = [
    ("stream", "cpu_us_per_frame"),
    ("stream", "frames_per_s"),
    ("interrupt", "cpu_us_per_cycle"),
    ("interrupt", "ack_us"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """``scripts/bench_trace.py --smoke``, as the command it is: its own interpreter,
    and a worker interpreter per variant and workload, told the sizes on its command line."""
    out = tmp_path_factory.mktemp("bench") / "trace.json"
    done = run_script(
        [sys.executable, str(REPO / "scripts" / "bench_trace.py"), "--smoke", "--json", str(out)],
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.read_text()), done.stdout


def test_every_variant_reports_every_figure(run):
    report, _ = run
    rows = [(r["workload"], r["metric"], r["variant"]) for r in report["rows"]]
    assert rows == [(w, m, v) for w, m in METRICS for v in bench_trace.VARIANTS]
    for row in report["rows"]:
        assert row["median"] > 0, row
        if row["variant"] == "baseline":
            assert row["ratio_to_baseline"] == 1
    assert list(report["runs"]) == ["stream", "interrupt"]
    for variants in report["runs"].values():
        assert list(variants) == list(bench_trace.VARIANTS)
        for results in variants.values():
            assert len(results) == 1
    assert report["repeat"] == 1
    assert report["runs"]["stream"]["off"][0]["frames"] == TINY.stream_requests * TINY.stream_words
    assert report["runs"]["interrupt"]["off"][0]["cycles"] == TINY.interrupt_cycles
    assert report["trace_bytes_per_frame"] > 0
    assert list(report["hook_ns_per_frame"]) == [
        "baseline",
        "off",
        "on, sink discards",
        "on, JSON file",
    ]


def test_the_table_has_a_line_per_row(run):
    report, printed = run
    lines = printed.splitlines()
    for row in report["rows"]:
        assert any(
            line.split()[:3] == [row["workload"], row["metric"], row["variant"]] for line in lines
        ), row
    for name in report["hook_ns_per_frame"]:
        assert any(line.strip().startswith(name) for line in lines), name
    assert "tracing off adds" in printed


def test_the_baseline_calls_no_per_frame_event_and_never_the_trace(tmp_path):
    package = bench_trace.make_baseline(tmp_path) / "trio_agent"
    events = ast.parse((package / bench_trace.EVENTS_MODULE).read_text())
    assert not bench_trace._calls(events, bench_trace._is_trace)
    for path in (package / bench_trace.TELLERS).rglob("*.py"):
        told = {
            name
            for _, name in bench_trace._calls(ast.parse(path.read_text()), bench_trace._is_events)
        }
        assert not told & bench_trace.PER_FRAME_EVENTS, path
    # The copy differs from this tree only where hooks were: the same files, the same lines.
    for path in package.rglob("*.py"):
        original = REPO / "trio_agent" / path.relative_to(package)
        assert len(path.read_text().split("\n")) == len(original.read_text().split("\n"))
