"""``trio-agent serve --workers N``: N server processes on one port, each a node.

One trio-agent process uses one core. With ``--workers N`` the command becomes a
small supervisor: it starts N processes of ``python -m trio_agent serve`` with the
same flags plus ``--workers 1`` and ``--node-id <base>-w<i>``, and with
``TRIO_AGENT_REUSE_PORT=1`` in their environment, so that each listens on the same
port with ``SO_REUSEPORT`` and the kernel spreads new connections over them.

The supervisor holds no socket and no session. It forwards SIGTERM and SIGINT to
every worker (so SIGTERM drains them in cluster mode, as it would one server),
and returns when all have exited, with the worst of their exit codes. A worker
that exits while no signal was received is a failure: it is logged, the others
are stopped (SIGTERM), and the exit code says so; a supervisor above this one
(systemd, a container runtime) then restarts the whole, rather than leaving a
server that silently serves with fewer cores than asked for.

Synchronous on purpose: it waits on processes and signals, nothing else.
Workers are started in their own session (a Ctrl-C in the terminal reaches only
the supervisor, which forwards it once), and on Linux each is asked to receive
SIGTERM if the supervisor dies, so that no worker outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Final

from loguru import logger

from trio_agent.server.config import ServerConfig
from trio_agent.server.transport import REUSE_PORT_VARIABLE

__all__ = ["NO_REDIS_WARNING", "run_workers", "worker_node_ids"]

#: What the supervisor logs when it starts workers with no shared store.
NO_REDIS_WARNING: Final = (
    "resume across workers needs --redis-url: a client that reconnects may land on another worker"
)

#: Linux's PR_SET_PDEATHSIG (prctl(2)).
_PR_SET_PDEATHSIG: Final = 1


def worker_node_ids(base: str, workers: int) -> list[str]:
    """The ``--node-id`` of each worker: ``<base>-w0``, ``<base>-w1``, ... (at most 64
    characters each, as ``--node-id`` allows)."""
    return [f"{base[: 64 - len(f'-w{i}')]}-w{i}" for i in range(workers)]


def _default_base() -> str:
    """The node id the workers share when ``--node-id`` is not given: host and pid."""
    host = "".join(c if c.isalnum() or c in "-._" else "-" for c in socket.gethostname())
    return f"{host or 'host'}-{os.getpid()}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    # Not Linux: the worker survives a supervisor killed with SIGKILL.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _exit_code(returncode: int) -> int:
    """A process's exit status as a shell shows it (128 + N when killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def run_workers(argv: Sequence[str], config: ServerConfig) -> int:
    """Run ``config.workers`` worker processes of ``serve`` (``argv``: the flags the
    command was given, passed on to each worker); return the worst exit code.

    Raises ``ValueError`` for a port of 0 (each worker would pick another).
    """
    if config.port == 0:
        raise ValueError("--workers needs a fixed --port (with 0 each worker would pick its own)")
    if not config.clustered:
        logger.warning(NO_REDIS_WARNING, workers=config.workers)
    base = config.node_id or _default_base()
    environment = {**os.environ, REUSE_PORT_VARIABLE: "1"}
    signalled: list[int] = []
    workers: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for node_id in worker_node_ids(base, config.workers):
            command = [sys.executable, "-m", "trio_agent", "serve", *argv]
            command += ["--workers", "1", "--node-id", node_id]
            workers.append(
                subprocess.Popen(
                    command,
                    env=environment,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            )
            logger.info("worker started", node_id=node_id, pid=workers[-1].pid)
        return _supervise(workers, signalled)
    finally:
        for worker in workers:
            if worker.poll() is None:  # only when the supervisor itself failed
                worker.kill()
                worker.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _supervise(workers: list[subprocess.Popen[bytes]], signalled: list[int]) -> int:
    """Wait for every worker; stop the others when one exits unasked.

    Returns the worst exit code of the workers, or, when one exited unasked, that
    worker's (at least 1): the others were stopped because of it, and how they
    ended (one still starting dies of the SIGTERM itself) says nothing more."""
    running = {worker.pid: worker for worker in workers}
    worst = 0
    failed: int | None = None
    while running:
        pid, status = os.waitpid(-1, 0)
        worker = running.pop(pid, None)
        if worker is None:
            continue
        worker.returncode = os.waitstatus_to_exitcode(status)
        code = _exit_code(worker.returncode)
        worst = max(worst, code)
        if signalled:
            logger.info("worker exited", pid=pid, exit_code=code)
            continue
        logger.error("worker exited unexpectedly: stopping the others", pid=pid, exit_code=code)
        failed = max(code, 1)
        signalled.append(signal.SIGTERM)
        for other in running.values():
            other.send_signal(signal.SIGTERM)
    return worst if failed is None else failed
