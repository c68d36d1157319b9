"""scripts/demo_screenshots.py, which takes the docs' screenshots of the demo page, runs:
a real `scripts/serve`, a real Chromium, each PNG written at the page's width."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from served import ROOT

pytestmark = pytest.mark.browser

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("the browser tests run on Linux", allow_module_level=True)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_the_screenshot_script_writes_the_docs_pictures(tmp_path):
    # Its own process: Playwright's sync API allows one instance per thread, and the
    # browser tests keep theirs open for the session.
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo_screenshots.py"),
            *["--out", str(tmp_path), "--only", "empty", "--only", "barge-in"],
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # (The spoken one is left out: a spoken reply takes seconds, and the browser tests
    # already play one.)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-barge-in.png", "demo-empty.png"]
    for name in ["demo-empty.png", "demo-barge-in.png"]:
        assert f"wrote {tmp_path / name}" in run.stdout
        width, height = png_size(tmp_path / name)
        assert width == 1100
        assert height >= 760
