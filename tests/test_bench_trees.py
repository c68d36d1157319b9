"""``bench_interrupt.py --tree LABEL=PATH``: another source tree's trio-agent, measured
in the same run as this checkout's (the commit before a change, say).

The tree here is a copy of the package with one line added at import, so the test
can tell which code each server ran.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench_interrupt import parse_trees, rotated, with_trees  # noqa: E402

from tests.script_runs import run_script  # noqa: E402

MARK = "this is the copied tree"


def test_a_tree_row_comes_right_after_trio_agent_and_only_where_it_runs():
    assert with_trees(["trio-agent", "fifo", "asyncio"], ["tree-a", "tree-b"]) == [
        "trio-agent",
        "tree-a",
        "tree-b",
        "fifo",
        "asyncio",
    ]
    assert with_trees(["asyncio", "fastapi"], ["tree-a"]) == ["asyncio", "fastapi"]


@pytest.mark.parametrize("spec", ["no-equals", "=/tmp", "label=", "x=/nonexistent/tree"])
def test_a_bad_tree_is_refused_before_anything_starts(spec):
    with pytest.raises(SystemExit, match="--tree"):
        parse_trees([spec])


def test_two_trees_need_two_labels():
    with pytest.raises(SystemExit, match="label of its own"):
        parse_trees([f"a={REPO}", f"a={REPO}"])


def test_a_tree_serves_its_own_code_next_to_this_checkout(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "trio_agent", tree / "trio_agent")
    init = tree / "trio_agent" / "__init__.py"
    init.write_text(init.read_text() + f"\nimport sys as _sys\nprint({MARK!r}, file=_sys.stderr)\n")
    out, logs = tmp_path / "run.json", tmp_path / "logs"
    done = run_script(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_interrupt.py"),
            "--quick",
            "--scenario",
            "idle",
            "--scenario",
            "slow-reader",
            "--slow-reader-trials",
            "1",
            "--slow-reader-pause-s",
            "0.05",
            "--server",
            "trio-agent",
            "--heartbeats",
            "4",
            "--tree",
            f"copy={tree}",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "run.png"),
            "--log-dir",
            str(logs),
        ],
        timeout=120,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "run.png").stat().st_size > 0  # the tree's rows have a colour
    run = json.loads(out.read_text())
    results = run["scenarios"]["idle"]["results"]
    assert list(results) == ["trio-agent", "tree-copy"]
    # The targets table of the tree's row reads the tree's figures.
    (row,) = [r for r in run["tree_targets"]["tree-copy"] if r["workload"] == "idle"]
    assert row["trio_agent"] == results["tree-copy"]["rtt_ms"]["p50"]
    (ours,) = [r for r in run["targets"] if r["workload"] == "idle"]
    assert ours["trio_agent"] == results["trio-agent"]["rtt_ms"]["p50"]
    assert list(run["scenarios"]["slow-reader"]["results"]) == ["trio-agent", "tree-copy"]
    assert results["tree-copy"]["rtt_ms"]["count"] == 4
    assert results["tree-copy"]["errors"] == 0
    (copied,) = logs.glob("tree-copy-*.log")
    (checkout,) = logs.glob("trio-agent-*.log")
    assert MARK in copied.read_text()
    assert MARK not in checkout.read_text()


def test_every_server_takes_every_place_of_a_round_in_turn():
    servers = ["a", "b", "c"]
    orders = [rotated(servers, r) for r in range(4)]  # type: ignore[arg-type]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert rotated([], 3) == []


def test_a_scenario_runs_its_servers_in_a_rotated_order_each_round():
    """What run_scenario does with the rotation: the first server of each round moves on."""
    import asyncio
    from types import SimpleNamespace

    from bench_interrupt import run_scenario

    seen: list[str] = []

    class Recording:
        def rounds(self, budget: object) -> int:
            return 3

        async def run(self, server: SimpleNamespace, budget: object) -> dict[str, int]:
            seen.append(server.spec.key)
            return {"errors": 0}

        def merge(self, runs: list[dict[str, int]]) -> dict[str, int]:
            return runs[0]

        def ratios(self, results: dict[str, object]) -> dict[str, object]:
            return {}

        title = "recording"

    servers = [SimpleNamespace(spec=SimpleNamespace(key=k, label=k)) for k in ("a", "b", "c")]
    asyncio.run(run_scenario(Recording(), servers, None))  # type: ignore[arg-type]
    assert seen == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
