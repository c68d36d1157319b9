"""Running a script of ours as a process in a test, and leaving nothing behind.

The benchmarks start servers of their own. When a smoke test's time runs out,
``subprocess.run(..., timeout=...)`` kills the benchmark but not the servers it
started, which then outlive the test run. :func:`run_script` starts the script in
a process group of its own and, on a timeout, kills the whole group.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def run_script(
    argv: Sequence[str], *, timeout: float, check: bool = False, text: bool = False
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """``subprocess.run(argv, capture_output=True, ...)``, whose timeout kills the
    script's whole process group (``TimeoutExpired`` is raised as by ``run``)."""
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    done = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done
