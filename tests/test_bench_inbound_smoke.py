"""scripts/bench_inbound.py still runs: two trees (this checkout twice), one round,
every figure present and the ratios taken against the first tree.

Not a timing test (benchmarks never are): it keeps the script, its server
command line and its client working.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.script_runs import run_script

REPO = Path(__file__).resolve().parent.parent


def test_the_benchmark_serves_each_tree_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "inbound.json"
    done = run_script(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_inbound.py"),
            *("--tree", f"a={REPO}", "--tree", f"b={REPO}"),
            *("--rounds", "1", "--round-trips", "20", "--messages", "200", "--json", str(out)),
        ],
        timeout=120,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "| a |" in done.stdout
    assert "| b |" in done.stdout
    figures = json.loads(out.read_text())
    assert [row["tree"] for row in figures["rows"]] == ["a", "b"]
    for row in figures["rows"]:
        assert 0 < row["rtt_p50_ms"] <= row["rtt_p90_ms"]
        assert row["cpu_us_per_round_trip"] >= 0
        assert row["cpu_us_per_message_in_window"] >= 0
    # (None when the run was too short for the CPU clock's 10 ms ticks.)
    assert figures["rows"][0]["cpu_ratio_window"] in (1.0, None)
