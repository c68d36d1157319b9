"""scripts/bench_upstream.py still runs: two rounds, every figure present.

Not a timing test (benchmarks never are): it only keeps the script and the fake
upstream's ``--report`` mode, which the script drives in a subprocess, working.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "bench_upstream.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_upstream", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_upstream", module)
    spec.loader.exec_module(module)
    return module


async def test_the_benchmark_runs_and_reports_every_figure():
    bench = load_bench()
    figures = await bench.measure_upstream_interrupts(rounds=2, tokens_per_s=400)
    assert figures["rounds"] == 2
    assert figures["upstream_cancelled_rounds"] == 2
    assert figures["stale_frames"] == 0
    assert figures["violations"] == 0, figures["first_violations"]
    assert set(figures["rows"]) == set(bench._LABELS)
    for row in figures["rows"].values():
        assert 0 <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    lines: list[str] = []
    bench.table(figures, lines.append)
    assert "INTERRUPT read -> upstream sees EOF" in "\n".join(lines)
