"""Real server processes for tests: a throwaway ``redis-server`` (or ``valkey-server``) on loopback.

Synchronous on purpose: a module-scoped pytest fixture starts the server once, before
any Trio run, and stops it after the last test of the module. The process is always
stopped in a ``finally`` (no orphan is left behind, even when a test fails), keeps
nothing on disk (``--save ''``, ``--appendonly no``, a temporary ``--dir``), and its
output goes to a temporary file (never a pipe that nobody reads, which would stall
the server once full); the file's tail is in the error when the server never comes up.

``restart()`` starts a new process on the same port, so a test can check that a
client survives "Redis went away and came back"::

    with redis_server() as redis:
        redis.kill()      # every call now fails
        redis.restart()   # and works again, same URL
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RedisServer", "RedisServerError", "free_port", "redis_executable", "redis_server"]

#: How long a new server has to answer PING before we give up on it.
STARTUP_TIMEOUT_S = 5.0
#: How long :meth:`RedisServer.stop` waits after SIGTERM before it sends SIGKILL.
STOP_GRACE_S = 3.0
#: The executables tried, in order, when none is named.
EXECUTABLES = ("redis-server", "valkey-server")


class RedisServerError(RuntimeError):
    """The server could not be started (or did not answer PING in time)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it (bind to port 0); it is free when this returns, and only
    very likely still free when the caller binds it a moment later.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_executable() -> str | None:
    """The path of ``redis-server``, else of ``valkey-server``, on ``PATH``; ``None``: neither."""
    for name in EXECUTABLES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


class _Process:
    """The one mutable part of a :class:`RedisServer`: the process running right now."""

    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        self.executable = executable
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and return once it answers PING (or raise, having stopped it)."""
        command = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
        ]
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_it_answers()
        except BaseException:
            self.stop()
            raise

    def _wait_until_it_answers(self) -> None:
        assert self.popen is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.popen.poll() is not None:
                raise RedisServerError(
                    f"{self.executable} on port {self.port} exited with code "
                    f"{self.popen.returncode} before answering PING:\n{self.log_tail()}"
                )
            if _answers_ping(self.port):
                return
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"{self.executable} on port {self.port} did not answer PING within "
                    f"{STARTUP_TIMEOUT_S:g} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)  # polling a process we do not control; not test synchronisation

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines the server wrote (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def stop(self) -> None:
        """SIGTERM, wait up to :data:`STOP_GRACE_S`, then SIGKILL; always reaps the process."""
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()

    def kill(self) -> None:
        """SIGKILL at once (a crash, as far as its clients can tell) and reap it."""
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.kill()
        popen.wait()


def _answers_ping(port: int) -> bool:
    """Whether something on ``127.0.0.1:port`` answers an inline ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(frozen=True)
class RedisServer:
    """A running test server: connect to ``url``.

    ``url``, ``port`` and ``executable`` stay the same across :meth:`restart`;
    ``pid`` is the process running now (a new one after a restart, 0 while stopped).
    """

    url: str
    port: int
    executable: str
    _process: _Process = field(repr=False, compare=False)

    @property
    def pid(self) -> int:
        """The server's process id now; 0 while it is stopped or killed."""
        popen = self._process.popen
        return popen.pid if popen is not None and popen.poll() is None else 0

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid != 0

    def stop(self) -> None:
        """Stop the server: SIGTERM, and SIGKILL if it is still there after 3 s."""
        self._process.stop()

    def kill(self) -> None:
        """Kill the server with SIGKILL: connections drop with no goodbye, data is gone."""
        self._process.kill()

    def restart(self) -> None:
        """Start the server again on the same port (stopping it first if it runs); an
        empty database, since nothing is kept on disk. Returns once it answers PING."""
        self._process.stop()
        self._process.start()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote, for an assertion's message."""
        return self._process.log_tail(lines)


@contextmanager
def redis_server(
    *, port: int | None = None, executable: str | None = None
) -> Iterator[RedisServer]:
    """Run a throwaway Redis (or Valkey) server on 127.0.0.1 for the ``with`` block.

    ``port`` defaults to a free one; ``executable`` to :func:`redis_executable`.
    Raises :class:`RedisServerError` when there is no server to run or it does not
    answer PING within 5 s (with the server's output in the message). The server is
    stopped when the block ends, however it ends.
    """
    executable = executable or redis_executable()
    if executable is None:
        raise RedisServerError(
            "neither redis-server nor valkey-server is on PATH "
            "(Debian: apt-get install redis-server)"
        )
    port = free_port() if port is None else port
    with tempfile.TemporaryDirectory(prefix="trio-agent-redis-") as workdir:
        process = _Process(executable, port, Path(workdir))
        try:
            process.start()
            yield RedisServer(
                url=f"redis://127.0.0.1:{port}/0",
                port=port,
                executable=os.fspath(executable),
                _process=process,
            )
        finally:
            process.stop()
