"""``scripts/count_steps.py`` counts a workload's task steps, frames and system calls
for each source tree, from a wrapper around the tree's own server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.script_runs import run_script

REPO = Path(__file__).resolve().parent.parent


def test_the_counts_of_an_idle_session_are_written_per_tree(tmp_path):
    out = tmp_path / "counts.json"
    done = run_script(
        [
            sys.executable,
            str(REPO / "scripts" / "count_steps.py"),
            "--scenario",
            "idle",
            "--tree",
            f"this={REPO}",
            "--json",
            str(out),
        ],
        timeout=120,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    counts = json.loads(out.read_text())["counts"]["tree-this"]
    # 300 HEARTBEATs, each read and answered (at least a step, a read and a write each).
    assert counts["steps"] >= 300
    assert counts["passes"] >= 300
    assert counts["syscw"] >= 300
    assert counts["syscr"] >= 300
    assert counts["stream_frames"] == 0  # an idle session streams nothing
    assert "== counts over each server's life (idle)" in done.stdout
