"""The server under soak, watched from outside: its log, its memory, its file descriptors.

The server runs as a separate process. :class:`ServerProcess` follows its JSON
log (the ``server stats`` lines give sessions and live tasks; the ``interrupt
acknowledged`` lines the server-side ACK time) and counts every line that holds
the token; :func:`watch` samples RSS and open fds from ``/proc`` (Linux only).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio
from soak_client import MAX_INPUT_BYTES, MAX_MESSAGE_BYTES, SEND_TIMEOUT_S
from soak_http_attacks import HOARD

#: A JSON log line's session id (read with a regex: parsing every line costs too much).
SESSION_ID = re.compile(rb'"session_id": ?"([^"]{1,64})"')
#: A JSON log line's level, from the start of its "text" field.
LEVEL = re.compile(rb'^\{"text": "[^|"]*\| (\w+)')


def server_command() -> list[str]:
    """The command that starts the server under soak: loopback, a free port, JSON logs
    at DEBUG with frequent stats lines, and the limits the clients probe (a short
    ``send_timeout_s``, so that stalls resolve within the run; ``--max-sessions`` of
    ``HOARD``, so that one address unbounded can take them all). The token, and
    the sessions one address may hold, go in the environment (the token never on
    the command line)."""
    return [
        sys.executable, "-m", "trio_agent", "serve",
        "--host", "127.0.0.1", "--port", "0",
        "--log-format", "json", "--log-level", "DEBUG", "--stats-interval-s", "0.25",
        "--send-timeout-s", str(SEND_TIMEOUT_S), "--idle-timeout-s", "30",
        "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-input-bytes", str(MAX_INPUT_BYTES),
        "--max-sessions", str(HOARD),
    ]  # fmt: skip


def open_server_command() -> list[str]:
    """The second server: no token (the environment's is removed), INFO logs. It is
    what a DNS-rebinding page aims at: only its Host check stands in the way."""
    return [
        sys.executable, "-m", "trio_agent", "serve", "--host", "127.0.0.1", "--port", "0",
        "--log-format", "json", "--log-level", "INFO",
    ]  # fmt: skip


@dataclass
class ServerProcess:
    proc: trio.Process
    token: str
    url: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    stats_updates: int = 0
    log_lines: int = 0
    secret_leaks: int = 0
    #: The messages of the log lines that held the token (a few).
    secret_leak_samples: list[str] = field(default_factory=list)
    log_bytes: int = 0
    #: Log bytes at INFO and above (what a server at the default level writes), by
    #: session id; lines of no session are under "".
    log_bytes_by_session: Counter[str] = field(default_factory=Counter)
    levels: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    warning_samples: list[str] = field(default_factory=list)
    #: INTERRUPT read -> INTERRUPT_ACK written, as the server logs it.
    ack_us: list[int] = field(default_factory=list)
    listening: trio.Event = field(default_factory=trio.Event)
    _buffer: bytes = b""

    async def follow_log(self, log: trio.abc.AsyncResource) -> None:
        """Read the server's log file as it grows (``tail -f``), until cancelled.

        The server logs to a file, not a pipe: a pipe that the (busy) soak process
        reads too slowly would block the server's event loop on every log line.
        """
        while True:
            if not await self.read_more(log):
                await trio.sleep(0.05)

    async def read_more(self, log: Any) -> bool:
        chunk = await log.read(1 << 20)
        if not chunk:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        token = self.token.encode()
        for line in lines:
            self.log_lines += 1
            self.log_bytes += len(line) + 1
            level = LEVEL.match(line)
            if level is None or level.group(1) not in (b"DEBUG", b"TRACE"):
                session = SESSION_ID.search(line)
                key = session.group(1).decode() if session else ""
                self.log_bytes_by_session[key] += len(line) + 1
            if token and token in line:
                self.secret_leaks += 1
                if len(self.secret_leak_samples) < 5:
                    message = re.search(rb'"message": ?"([^"]{0,80})', line)
                    self.secret_leak_samples.append(
                        message.group(1).decode(errors="replace")
                        if message
                        else line[:80].decode(errors="replace")
                    )
            if (
                b'"server stats"' in line
                or b'"interrupt acknowledged"' in line
                or b'"listening"' in line
                or b'"WARNING"' in line
                or b'"ERROR"' in line
            ):
                self._parse(line)
        return True

    def _parse(self, line: bytes) -> None:
        try:
            record = json.loads(line)["record"]
        except (ValueError, KeyError):
            return
        level, message, extra = record["level"]["name"], record["message"], record["extra"]
        if message == "listening":
            self.url = extra["url"]
            self.listening.set()
        elif message == "interrupt acknowledged":
            self.ack_us.append(extra["latency_us"])
        elif message == "server stats":
            self.stats = {k: v for k, v in extra.items() if isinstance(v, int)}
            self.stats_updates += 1
        if level in ("WARNING", "ERROR", "CRITICAL"):
            self.levels[level] += 1
            self.warnings[f"{level}: {message}"] += 1
            if self.warnings[f"{level}: {message}"] <= 3:  # a few of each kind
                shown = {k: v for k, v in extra.items() if k != "session_id"}
                self.warning_samples.append(f"{message} {shown}")


def proc_sample(pid: int) -> tuple[int, int]:
    """(RSS in bytes, open file descriptors) of process ``pid``, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def new_file(path: Path) -> BinaryIO:
    """An empty file to hand to a child process as its stderr (it needs a real fd)."""
    return open(path, "wb")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    tasks: int
    sessions: int


async def watch(server: ServerProcess, samples: list[Sample], t0: float, interval: float) -> None:
    while True:
        rss, fds = proc_sample(server.proc.pid)
        samples.append(
            Sample(
                trio.current_time() - t0,
                rss,
                fds,
                server.stats.get("tasks", -1),
                server.stats.get("sessions", -1),
            )
        )
        await trio.sleep(interval)


async def wait_idle(server: ServerProcess, baseline_tasks: int | None, limit_s: float) -> bool:
    """Wait for two fresh stats lines showing no session and the baseline task count."""
    with trio.move_on_after(limit_s):
        calm = 0
        seen = server.stats_updates
        while calm < 2:
            await trio.sleep(0.1)
            if server.stats_updates == seen:
                continue
            seen = server.stats_updates
            stats = server.stats
            idle = stats.get("sessions") == 0 and stats.get("connections") == 0
            if baseline_tasks is not None:
                idle = idle and stats.get("tasks") == baseline_tasks
            calm = calm + 1 if idle else 0
        return True
    return False
