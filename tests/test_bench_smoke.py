"""The interrupt benchmark runs end to end (tiny counts) and reports every figure.

It asserts no timing: only that each workload ran against each of its servers,
that every figure of the tables is there, and that trio-agent (in both lane modes)
sent no STREAM frame after an ACK, broke no guarantee and made no error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from interrupt_bench.scenarios import SCENARIOS  # noqa: E402

TINY = [
    "--quick",
    "--sessions", "2",
    "--trials", "2",
    "--throughput-frames", "400",
    "--slow-reader-trials", "1",
    "--slow-reader-pause-s", "0.05",
    "--scale-sessions", "12",
    "--scale-interrupts", "3",
    "--scale-window-s", "0.3",
    "--scale-settle-s", "0.1",
    "--upstream-rounds", "2",
]  # fmt: skip

OURS = ("trio-agent", "fifo", "lowat")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "run.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_interrupt.py"), *TINY, "--json", str(out)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_workload_reports_every_figure_for_every_server(run, name):
    scenario = SCENARIOS[name]
    results = run["scenarios"][name]["results"]
    assert list(results) == list(scenario.servers)
    for server, figures in results.items():
        missing = [c.path for c in scenario.columns if c.cell(figures) == "-"]
        assert not missing, f"{name}/{server} lacks {missing}"
    assert run["scenarios"][name]["ratios"] or name not in ("barge-in", "throughput")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_trio_agent_sends_nothing_stale_and_breaks_no_guarantee(run, name):
    for server, figures in run["scenarios"][name]["results"].items():
        if server in OURS:
            assert figures["stale_frames"] == 0, (server, figures)
            assert figures["violations"] == 0, (server, figures["first_problems"])
            assert figures["errors"] == 0, (server, figures["first_problems"])


def test_trio_agent_bench_runs_the_script(capfd):
    from trio_agent.cli.main import main

    assert main(["bench", "--help"]) == 0
    assert "--quick" in capfd.readouterr().out
