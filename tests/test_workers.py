"""``trio-agent serve --workers N``: N processes on one port (SO_REUSEPORT), one supervisor.

Real processes on a free loopback port, stopped by PID whatever happens. Which
worker answered is told by the ``X-Trio-Agent-Node`` header of ``/healthz``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from trio_agent.cli.main import main
from trio_agent.cli.workers import NO_REDIS_WARNING, worker_node_ids
from trio_agent.testing.cluster import http_get, wait_until
from trio_agent.testing.processes import free_port

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreading: Linux")


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def supervisor(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``python -m trio_agent serve --workers 2`` on a free port; stopped (with every
    worker) by PID when the block ends."""
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "trio_agent", "serve", "--port", str(port), "--workers", "2"]
    with log.open("wb") as out:
        parent = subprocess.Popen([*command, *flags], stdout=out, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        wait_until(
            lambda: len(children_of(parent.pid)) == 2 or parent.poll() is not None,
            30,
            "the workers did not start",
            log.read_text,
        )
        workers = children_of(parent.pid)
        yield parent, port, log
    finally:
        for pid in [parent.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait()


def nodes_answering(port: int, log: Path) -> set[str]:
    """The workers that answer /healthz on ``port`` over up to 200 new connections."""
    url = f"http://127.0.0.1:{port}/healthz"

    def answers() -> bool:
        try:
            return http_get(url)[0] == 200
        except OSError:
            return False

    wait_until(answers, 60, "nobody answered /healthz", log.read_text)
    seen: set[str] = set()
    for _ in range(200):
        try:
            headers = http_get(url)[1]
        except OSError:
            continue  # the other worker may still be starting: its socket not yet bound
        seen.add(headers.get("x-trio-agent-node", "?"))
        if len(seen) == 2:
            break
    return seen


def test_two_workers_answer_on_one_port_and_sigterm_to_the_supervisor_stops_all(tmp_path):
    with supervisor(tmp_path, "--node-id", "edge") as (parent, port, log):
        workers = children_of(parent.pid)
        assert len(set(workers)) == 2
        wait_until(
            lambda: nodes_answering(port, log) == {"edge-w0", "edge-w1"},
            60,
            "both workers did not answer",
            log.read_text,
        )
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0, log.read_text()
        assert not [pid for pid in workers if alive(pid)]
        assert NO_REDIS_WARNING in log.read_text()


def test_a_worker_that_dies_stops_the_others_and_the_exit_code_says_so(tmp_path):
    with supervisor(tmp_path) as (parent, port, log):
        nodes_answering(port, log)
        first, second = children_of(parent.pid)
        os.kill(first, signal.SIGKILL)
        assert parent.wait(timeout=30) == 128 + signal.SIGKILL, log.read_text()
        assert not alive(second)
        assert "worker exited unexpectedly" in log.read_text()


def test_worker_node_ids_fit_a_node_id():
    assert worker_node_ids("edge", 3) == ["edge-w0", "edge-w1", "edge-w2"]
    assert all(len(node) == 64 for node in worker_node_ids("n" * 70, 2))


def test_workers_need_a_fixed_port(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", "2", "--port", "0"])
    assert exited.value.code == 2
    assert "--workers needs a fixed --port" in capsys.readouterr().err


def test_the_exit_code_is_the_failed_workers_not_that_of_one_it_stopped():
    """A worker that dies unasked stops the others; one of them may die of that very
    SIGTERM (143, still starting, no handler yet). The supervisor's code is the
    failure's (137 here), not the larger code of a worker it stopped itself."""
    # In a process of its own: the supervisor waits for any child of its process.
    script = """
import os, signal, subprocess, sys
from pathlib import Path
from trio_agent.cli.workers import _supervise
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
failed, stopped = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
failed.kill()  # dead (a zombie) before the supervisor starts waiting
while Path(f"/proc/{failed.pid}/stat").read_text().split()[2] != "Z":
    os.sched_yield()
print(_supervise([failed, stopped], []), stopped.returncode)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == [str(128 + signal.SIGKILL), str(-signal.SIGTERM)]
