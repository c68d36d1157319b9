"""The servers under test, each run as its own process on loopback.

A server is a command line with a ``{port}`` placeholder. The benchmark picks a
free port, starts the process with its output going to a log file, waits until
the port accepts connections, and measures the process from outside with psutil
(CPU seconds, resident memory): nothing in a server knows it is being measured.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SCRIPTS = Path(__file__).resolve().parent.parent
REPO = SCRIPTS.parent
HOST = "127.0.0.1"
PATH = "/ws"


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test."""

    key: str
    label: str
    description: str
    argv: tuple[str, ...]
    #: Run from this source tree (its ``trio_agent``, not this checkout's).
    tree: Path | None = None

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]


def _trio_agent(*flags: str) -> tuple[str, ...]:
    # Every connection of the load generator comes from 127.0.0.1: the per-address
    # session limit (100 by default) would refuse most of the scale workload.
    return (
        sys.executable,
        "-m",
        "trio_agent",
        "serve",
        "--port",
        "{port}",
        "--max-sessions-per-address",
        "0",
        *flags,
    )


def _fastapi(*flags: str) -> tuple[str, ...]:
    peer = str(SCRIPTS / "peers" / "fastapi_server.py")
    return (sys.executable, peer, "--port", "{port}", *flags)


def tree_server(label: str, tree: Path) -> ServerSpec:
    """trio-agent as ``tree`` has it (another commit, a change being measured), started
    the way the ``trio-agent`` row is: its figures compare with that row's in one run.

    ``-P`` and ``PYTHONPATH`` make the process import the tree's package whatever this
    checkout has installed; the tree needs no environment of its own.
    """
    argv = _trio_agent()
    return ServerSpec(
        f"tree-{label}",
        f"trio-agent @ {label}",
        f"trio-agent from the source tree {tree}",
        (argv[0], "-P", *argv[1:]),
        tree=tree.resolve(),
    )


#: What uvicorn's ``--ws auto`` picks in uvicorn 0.55: the sans-I/O protocol of
#: ``websockets`` (wsproto only when ``websockets`` is missing).
DEFAULT_UVICORN_WS = "websockets-sansio"


#: Every server the benchmark knows, by key. Scenarios name the ones they run.
SERVERS: dict[str, ServerSpec] = {
    spec.key: spec
    for spec in (
        ServerSpec(
            "trio-agent",
            "trio-agent",
            "as shipped: priority lane, cancel scope per request",
            _trio_agent(),
        ),
        ServerSpec(
            "fifo",
            "trio-agent --lanes fifo",
            "baseline: ACK queues behind stream frames, cut requests' frames kept",
            _trio_agent("--lanes", "fifo"),
        ),
        ServerSpec(
            "asyncio",
            "asyncio + websockets",
            "baseline: the seed design (task per request, cancel event, direct sends)",
            (sys.executable, str(SCRIPTS / "peers" / "asyncio_server.py"), "--port", "{port}"),
        ),
        ServerSpec(
            "ceiling",
            "bare trio-websocket loop",
            "ceiling: one send_message per frame, no models, no lanes",
            (
                sys.executable,
                str(SCRIPTS / "peers" / "trio_websocket_ceiling.py"),
                "--port",
                "{port}",
            ),
        ),
        ServerSpec(
            "fastapi",
            "FastAPI + uvicorn",
            "baseline: the stack the project grew out of (create_task per request,"
            " task.cancel() on INTERRUPT), uvicorn's default WebSocket protocol"
            f" ({DEFAULT_UVICORN_WS})",
            _fastapi(),
        ),
        ServerSpec(
            "fastapi-websockets",
            "FastAPI + uvicorn --ws websockets",
            "the same, on uvicorn's older WebSocket protocol (websockets' asyncio one)",
            _fastapi("--ws", "websockets"),
        ),
        ServerSpec(
            "fastapi-wsproto",
            "FastAPI + uvicorn --ws wsproto",
            "the same, on uvicorn's wsproto WebSocket protocol (only on demand: --server)",
            _fastapi("--ws", "wsproto"),
        ),
        ServerSpec(
            "fastapi-lowat",
            "FastAPI + uvicorn, TCP_NOTSENT_LOWAT 16 KiB",
            "FastAPI + uvicorn with unsent kernel data bounded to 16 KiB, as Trio bounds it",
            _fastapi("--tcp-notsent-lowat", "16384"),
        ),
        ServerSpec(
            "lowat",
            "trio-agent --tcp-notsent-lowat 16384",
            "as shipped, with unsent kernel data bounded to 16 KiB",
            _trio_agent("--tcp-notsent-lowat", "16384"),
        ),
    )
}


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class RunningServer:
    """A started server process. Stop it with :meth:`stop`."""

    def __init__(self, spec: ServerSpec, log_dir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.log_path = log_dir / f"{spec.key}-{self.port}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if spec.tree is not None:
            env["PYTHONPATH"] = str(spec.tree)
        self.process = subprocess.Popen(
            spec.command(self.port),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=spec.tree or REPO,
            env=env,
        )
        self.ps = psutil.Process(self.process.pid)

    async def wait_ready(self, limit_s: float = 90.0) -> None:
        """Wait until the server listens on its port.

        It looks at the process's sockets instead of connecting: a probe connection
        that never completes a WebSocket handshake would sit in the server (until
        its handshake timeout) and slow down its shutdown. The limit is generous:
        eight servers importing at once on a busy two-core machine took over 30 s.
        """
        deadline = time.monotonic() + limit_s
        while not any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == self.port
            for c in self.ps.net_connections(kind="tcp")
        ):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.label} exited with {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.spec.label} did not listen within {limit_s} s")
            await asyncio.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds the server process has used so far."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        return int(self.ps.memory_info().rss)

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM); :meth:`stop` waits for it."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
