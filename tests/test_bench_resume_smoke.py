"""The resume benchmark runs end to end (tiny counts) and reports every figure.

It asserts no timing: only that every drop was resumed, that across all of them
no frame was lost or duplicated and every reply got exactly one DONE, that no
guarantee broke, and that both tables have every figure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench_resume import DROP_COLUMNS, OVERHEAD_COLUMNS  # noqa: E402

from tests.script_runs import run_script  # noqa: E402

TINY = [
    "--quick",
    "--sessions", "2",
    "--replies", "1",
    "--words", "40",
    "--words-per-s", "200",
    "--drops-per-reply", "2",
    "--throughput-sessions", "2",
    "--throughput-frames", "400",
    "--throughput-rounds", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "resume.json"
    run_script(
        [sys.executable, str(REPO / "scripts" / "bench_resume.py"), *TINY, "--json", str(out)],
        check=True,
        timeout=120,
    )
    return json.loads(out.read_text())


def test_every_drop_resumes_with_no_frame_lost_or_duplicated(run):
    drops = run["drops"]
    assert drops["errors"] == 0, drops["first_problems"]
    assert drops["violations"] == 0, drops["first_problems"]
    assert drops["drops"] == drops["resumed"] == 4
    assert drops["replies"] == drops["replies_completed"] == drops["replies_words_exact"] == 4
    assert drops["frames_received"] == 4 * 40  # 2 sessions, 2 replies each
    for key in (
        "frames_lost",
        "frames_duplicated",
        "frames_out_of_order",
        "resume_gaps",
        "missing_dones",
        "extra_dones",
        "frames_after_drop",
    ):
        assert drops[key] == 0, key
    assert drops["target_lost_duplicated"] == "met"
    assert drops["connect_to_first_frame_ms"]["count"] == 4
    assert drops["resume_to_first_frame_ms"]["count"] == 4


def test_both_tables_have_every_figure(run):
    for columns, figures in ((DROP_COLUMNS, run["drops"]), (OVERHEAD_COLUMNS, run["overhead"])):
        missing = [c.path for c in columns if c.cell(figures) == "-"]
        assert not missing, missing
    overhead = run["overhead"]
    assert overhead["pairs"] == 1
    assert overhead["resume"]["errors"] == overhead["off"]["errors"] == 0
    assert (
        overhead["resume"]["rounds"][0]["frames"] == overhead["off"]["rounds"][0]["frames"] == 400
    )
