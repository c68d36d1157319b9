"""The voice benchmark runs end to end (tiny counts) and reports every figure.

It asserts no timing: only that every row is there, that no AUDIO chunk came after
an ACK, and that every DONE's audio_ms was exactly the audio the client received.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.script_runs import run_script

REPO = Path(__file__).resolve().parent.parent


def test_the_voice_benchmark_runs_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "voice.json"
    run_script(
        [sys.executable, str(REPO / "scripts" / "bench_voice.py"), "--quick", "--trials", "4",
         # 105: past the server's default sessions per address (100), which every
         # session of the load generator shares.
         "--sessions", "105", "--window-s", "0.5", "--no-espeak", "--json", str(out)],
        check=True,
        timeout=120,
    )  # fmt: skip
    run = json.loads(out.read_text())
    rows = run["barge_in"]["results"]
    assert [r["audio_pace"] for r in rows] == [1.0, 0.0, 0.0]
    for row in rows:
        assert row["trials"] == row["interrupted"] == row["audio_ms_exact"] == 4
        assert row["chunks_after_ack"] == 0
        assert row["ack_ms"]["p99"] is not None
        assert row["last_audio_ms"]["p99"] is not None
    rows = run["capacity"]["results"]
    assert [r["label"] for r in rows] == ["builtin", "builtin, lead 0"]
    for capacity in rows:
        assert capacity["sessions"] == 105
        assert capacity["chunks"] > 0
        assert capacity["server_cpu"] > 0
