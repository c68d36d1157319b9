"""run_script's timeout kills the script and every process it started."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.script_runs import run_script

#: A script that starts a child which would outlive it, prints the child's pid, then hangs.
SPAWNER = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print(child.pid, flush=True); time.sleep(60)"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by init) is as good as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_a_timeout_kills_the_scripts_children_too(tmp_path) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        run_script([sys.executable, "-c", SPAWNER], timeout=2.0, text=True)
    output = expired.value.stdout or b""
    child = int(output.decode() if isinstance(output, bytes) else output)
    assert not alive(child)


def test_a_script_that_ends_gives_its_output_and_status() -> None:
    done = run_script(
        [sys.executable, "-c", "print('hi'); raise SystemExit(3)"], timeout=30, text=True
    )
    assert (done.returncode, done.stdout) == (3, "hi\n")
    with pytest.raises(subprocess.CalledProcessError):
        run_script([sys.executable, "-c", "raise SystemExit(1)"], timeout=30, check=True)
