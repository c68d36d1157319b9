"""The interrupt benchmark runs end to end (tiny counts) and reports every figure.

It asserts no timing: only that each workload ran against each of its servers,
that every figure of the tables is there, that trio-agent (in both lane modes)
and the FastAPI + uvicorn peers sent no STREAM frame after an ACK, broke no
guarantee and made no error, that the FastAPI peer with TCP_NOTSENT_LOWAT had the
option on its accepted sockets, and that the targets table has every row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from interrupt_bench.scenarios import SCENARIOS  # noqa: E402

from tests.script_runs import run_script  # noqa: E402

TINY = [
    "--quick",
    "--sessions", "2",
    "--trials", "2",
    "--throughput-frames", "400",
    "--slow-reader-trials", "1",
    "--slow-reader-pause-s", "0.05",
    # Over trio-agent's default per-address session limit (100): all from 127.0.0.1.
    "--scale-sessions", "110",
    "--scale-interrupts", "3",
    "--scale-window-s", "0.3",
    "--scale-settle-s", "0.1",
    "--upstream-rounds", "2",
    "--heartbeats", "4",
]  # fmt: skip

OURS = ("trio-agent", "fifo", "lowat")
#: The FastAPI + uvicorn peers: correct implementations of the same protocol subset.
FASTAPI = ("fastapi", "fastapi-websockets", "fastapi-lowat")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def run(folder: Path) -> dict:
    out = folder / "run.json"
    done = run_script(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_interrupt.py"),
            *TINY,
            "--json",
            str(out),
            "--markdown",
            str(folder / "run.md"),
            "--log-dir",
            str(folder / "logs"),
        ],
        timeout=240,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
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


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fastapi_peers_send_nothing_stale_and_break_no_guarantee(run, name):
    for server, figures in run["scenarios"][name]["results"].items():
        if server in FASTAPI:
            assert figures["stale_frames"] == 0, (server, figures)
            assert figures["violations"] == 0, (server, figures["first_problems"])
            assert figures["errors"] == 0, (server, figures["first_problems"])


def test_fastapi_peer_runs_in_every_workload_with_peers(run):
    for name in ("barge-in", "throughput", "slow-reader", "scale", "idle"):
        assert {"fastapi", "fastapi-websockets"} <= set(run["scenarios"][name]["results"])
    assert "fastapi-lowat" in run["scenarios"]["slow-reader"]["results"]


def test_scale_opens_every_session_on_every_server(run):
    for server, figures in run["scenarios"]["scale"]["results"].items():
        assert figures["sessions_open"] == figures["sessions_wanted"] == 110, server


def test_fastapi_lowat_peer_set_the_option_on_its_accepted_sockets(run, folder):
    # The peer reads the option back with getsockopt on its first accepted socket.
    (log,) = (folder / "logs").glob("fastapi-lowat-*.log")
    assert "TCP_NOTSENT_LOWAT on an accepted socket: 16384" in log.read_text()
    for other in (folder / "logs").glob("fastapi-[0-9]*.log"):
        assert "TCP_NOTSENT_LOWAT" not in other.read_text()


def test_targets_table_has_every_target_with_both_peers(run, folder):
    from interrupt_bench.targets import TARGETS

    rows = run["targets"]
    assert [r["figure"] for r in rows] == [t.figure for t in TARGETS]
    for row, target in zip(rows, TARGETS, strict=True):
        assert row["trio_agent"] is not None, row
        if row["met"] is None:  # only a figure of 0 (CPU in so short a window) has no ratio
            assert 0 in (row["trio_agent"], row["fastapi"], row["asyncio"]), row
        if target.at_most is None:
            assert row["fastapi_server"] in target.fastapi, row
            assert (row["asyncio"] is not None) == target.asyncio, row
    assert "**Targets**" in (folder / "run.md").read_text()


def test_trio_agent_bench_runs_the_script(capfd):
    from trio_agent.cli.main import main

    assert main(["bench", "--help"]) == 0
    assert "--quick" in capfd.readouterr().out
