#!/usr/bin/env python3
"""Soak: many misbehaving clients against one server process, for a bounded time.

    .venv/bin/python scripts/soak.py                 # 60 s, 32 clients, loopback
    .venv/bin/python scripts/soak.py --duration 10 --clients 8 --json out.json

It starts ``python -m trio_agent serve`` on 127.0.0.1 (a free port, a random
token, a short ``send_timeout_s`` so that stalls resolve within the run) and runs
``--clients`` client tasks until ``--duration`` has passed. Each task picks a
behaviour again and again:

* stream: a REQUEST read to its DONE;
* interrupt: a long REQUEST cut after a few frames (one request, or all, or three
  INTERRUPTs back to back, sometimes a REQUEST right after an interrupt-all); the
  INTERRUPT -> INTERRUPT_ACK time is measured at the client;
* garbage: invalid frames of every kind (each must get its ERROR), sometimes an
  oversized WebSocket message (must close with 1009);
* heartbeat: round trips;
* stall: a fast stream the client stops reading, until the server aborts it, or
  a pause shorter than ``send_timeout_s`` after which reading resumes;
* vanish: leave mid-stream (TCP reset), mid-handshake, mid-frame, mid-close;
* flood: frames faster than the rate limit until the server closes with 1008;
* trespass: a wrong token (401), a foreign Origin (403).

Every conversation runs through :class:`trio_agent.protocol.guarantees.GuaranteeChecker`.
A watcher samples the server's RSS and open file descriptors (``/proc``, so Linux
only) and reads the server's ``server stats`` DEBUG lines (sessions, live tasks).

The report (a table, and JSON with ``--json``) gives frames, interrupts and their
ACK p50/p99 (at the client, and inside the server from its ``interrupt
acknowledged`` lines: INTERRUPT read to ACK written), bad frames tried,
disconnects by kind, and the end state once every client has gone: live tasks
against the idle baseline, open fds against the baseline, RSS growth, guarantees
violated, and whether the token ever reached a log line. The exit status is 0
only when no guarantee was violated, no task and no fd leaked, no secret was
logged and the server exited 0 on SIGTERM.

"Surprises" are client-side events that should not happen on a quiet machine (an
operation taking longer than 30 s, a flood that is not closed): they are listed,
and do not decide the verdict. Client and server share the machine, so on a busy
host the latencies say as much about the host as about the server.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import secrets
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])  # run inside the project's venv

import trio  # noqa: E402
from trio_websocket import (  # noqa: E402
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)
from wsproto import ConnectionType, WSConnection  # noqa: E402
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage  # noqa: E402

from trio_agent.protocol.guarantees import GuaranteeChecker  # noqa: E402

SEND_TIMEOUT_S = 2.0
MAX_MESSAGE_BYTES = 65_536
MAX_INPUT_BYTES = 8_192
OP_TIMEOUT_S = 30.0

Frame = dict[str, Any]


# --------------------------------------------------------------------------- tallies


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    ack_ms: list[float] = field(default_factory=list)
    heartbeat_ms: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    surprises: list[str] = field(default_factory=list)

    def surprise(self, what: str) -> None:
        self.counts["surprises"] += 1
        if len(self.surprises) < 20:
            self.surprises.append(what)


# --------------------------------------------------------------------------- a client


class Client:
    """One WebSocket session, every frame checked against the guarantees."""

    def __init__(self, ws: WebSocketConnection, stream: trio.SocketStream, tally: Tally) -> None:
        self.ws = ws
        self.stream = stream
        self.tally = tally
        self.checker = GuaranteeChecker()
        #: Answers by what they answer: DONE by request_id, the rest by ref.
        self.dones: dict[str, Frame] = {}
        self.answers: dict[str, Frame] = {}
        self._ids = itertools.count()

    def next_id(self, prefix: str = "c") -> str:
        return f"{prefix}{next(self._ids)}"

    async def send(self, frame: Frame) -> Frame:
        self.checker.sent(frame)
        await self.ws.send_message(json.dumps(frame))
        self.tally.counts["frames sent"] += 1
        return frame

    async def send_bad(self, raw: str | bytes) -> None:
        await self.ws.send_message(raw)
        self.tally.counts["frames sent"] += 1
        self.tally.counts["bad frames tried"] += 1

    async def recv(self) -> Frame:
        frame: Frame = json.loads(await self.ws.get_message())
        if frame["msg_type"] == "DONE":
            self.dones[frame["request_id"]] = frame
        elif frame.get("ref") is not None:
            self.answers[frame["ref"]] = frame
        self.tally.counts["frames received"] += 1
        for violation in self.checker.received(frame):
            self.tally.violations.append(str(violation))
        return frame

    async def until(self, predicate: Callable[[Frame], bool]) -> Frame:
        while True:
            frame = await self.recv()
            if predicate(frame):
                return frame

    async def request(self, rid: str, words: int, words_per_s: float, agent: str = "lorem") -> None:
        await self.send(
            {
                "msg_type": "REQUEST",
                "msg_id": self.next_id(),
                "request_id": rid,
                "payload": {
                    "input": "soak",
                    "agent": agent,
                    "options": {"words": words, "words_per_s": words_per_s},
                },
            }
        )
        self.tally.counts["requests"] += 1

    async def interrupt(self, rid: str | None) -> str:
        msg_id = self.next_id("i")
        frame: Frame = {"msg_type": "INTERRUPT", "msg_id": msg_id}
        if rid is not None:
            frame["request_id"] = rid
        await self.send(frame)
        self.tally.counts["interrupts"] += 1
        return msg_id

    async def answer_to(self, msg_id: str) -> Frame:
        while msg_id not in self.answers:
            await self.recv()
        return self.answers[msg_id]

    async def done_of(self, rid: str) -> Frame:
        while rid not in self.dones:
            await self.recv()
        done = self.dones[rid]
        self.tally.counts[f"DONE {done['payload']['status']}"] += 1
        return done

    async def until_closed(self) -> int:
        try:
            while True:
                await self.recv()
        except ConnectionClosed as closed:
            return closed.reason.code if closed.reason is not None else -1

    def finish(self) -> None:
        """The conversation is over and everything was answered: check the end state."""
        for violation in self.checker.finish():
            self.tally.violations.append(str(violation))


class Server:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    def credentials(self, rng: random.Random) -> tuple[str, list[str], list[tuple[bytes, bytes]]]:
        """The token in one of its three places: (target, subprotocols, headers)."""
        how = rng.randrange(3)
        if how == 0:
            return "/ws", [], [(b"authorization", f"Bearer {self.token}".encode())]
        if how == 1:
            return f"/ws?token={self.token}", [], []
        return "/ws", ["trio-agent.v1", f"trio-agent.token.{self.token}"], []


async def tcp(port: int, rcvbuf: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def reset(stream: trio.SocketStream) -> None:
    """Make the next close a TCP reset: the client vanishes, it does not say goodbye."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@asynccontextmanager
async def session(
    server: Server, tally: Tally, rng: random.Random, *, rcvbuf: int | None = None
) -> AsyncIterator[Client]:
    async with trio.open_nursery() as nursery:
        stream = await tcp(server.port, rcvbuf)
        target, subprotocols, headers = server.credentials(rng)
        ws = await wrap_client_stream(
            nursery,
            stream,
            "127.0.0.1",
            target,
            subprotocols=subprotocols,
            extra_headers=headers,
            max_message_size=1 << 24,
        )
        client = Client(ws, stream, tally)
        tally.counts["sessions"] += 1
        try:
            session_frame = await client.recv()
            assert session_frame["msg_type"] == "SESSION", session_frame
            yield client
        finally:
            with trio.move_on_after(2):
                await ws.aclose()
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- behaviours


async def streams(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        for _ in range(rng.randint(1, 3)):
            rid = c.next_id("r")
            words = rng.randint(10, 300)
            await c.request(rid, words, rng.choice([0, 0, 1000]))
            done = await c.done_of(rid)
            if done["payload"] != {"status": "completed", "interrupted": False, "frames": words}:
                tally.surprise(f"stream DONE {done['payload']}")
        c.finish()


async def interrupts(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        rid = c.next_id("r")
        await c.request(rid, 1_000_000, rng.choice([0, 200, 1000]))
        wanted = rng.randint(1, 10)
        await c.until(
            lambda f: (
                f["msg_type"] == "STREAM"
                and f["request_id"] == rid
                and f["payload"]["seq"] >= wanted - 1
            )
        )
        style = rng.choice(["one", "all", "burst", "all-then-request"])
        started = time.perf_counter()
        if style == "burst":
            ids = [await c.interrupt(rid), await c.interrupt(None), await c.interrupt(rid)]
        else:
            ids = [await c.interrupt(rid if style == "one" else None)]
        follow = None
        if style == "all-then-request":
            follow = c.next_id("r")
            await c.request(follow, 5, 0)
        for msg_id in ids:
            await c.answer_to(msg_id)
            tally.ack_ms.append((time.perf_counter() - started) * 1000)
        done = await c.done_of(rid)
        if not done["payload"]["interrupted"]:
            tally.surprise(f"interrupted request ended {done['payload']}")
        if follow is not None and (await c.done_of(follow))["payload"]["status"] != "completed":
            tally.surprise("the REQUEST right after an interrupt-all did not complete")
        c.finish()


def bad_frames(rng: random.Random) -> str | bytes:
    return rng.choice(
        [
            "{not json",
            "[1, 2, 3]",
            "null",
            '{"msg_type": "STREAM", "msg_id": "x"}',
            '{"msg_type": "REQUEST", "msg_id": "q"}',
            '{"msg_type": "REQUEST", "request_id": "bad id!", "payload": {"input": ""}}',
            '{"msg_type": "INTERRUPT", "msg_id": "\\ud800"}',
            '{"msg_type": "HEARTBEAT"}',
            json.dumps(
                {
                    "msg_type": "REQUEST",
                    "request_id": "big",
                    "payload": {"input": "x" * (MAX_INPUT_BYTES + 1)},
                }
            ),
            json.dumps(
                {
                    "msg_type": "REQUEST",
                    "request_id": "u",
                    "payload": {"input": "", "agent": "nope"},
                }
            ),
            bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))),
            "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 40))),
        ]
    )


async def garbage(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        count = rng.randint(1, 15)
        for _ in range(count):
            await c.send_bad(bad_frames(rng))
        for _ in range(count):
            await c.until(lambda f: f["msg_type"] == "ERROR")
        if rng.random() < 0.15:
            await c.send_bad("x" * (MAX_MESSAGE_BYTES + 1))
            code = await c.until_closed()
            tally.counts[f"closed {code} (oversized message)"] += 1
            return
        c.finish()


async def heartbeats(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        for _ in range(rng.randint(1, 5)):
            msg_id = c.next_id("h")
            started = time.perf_counter()
            await c.send({"msg_type": "HEARTBEAT", "msg_id": msg_id})
            await c.answer_to(msg_id)
            tally.heartbeat_ms.append((time.perf_counter() - started) * 1000)
        c.finish()


async def stalls(server: Server, tally: Tally, rng: random.Random) -> None:
    pause = rng.random() < 0.5
    async with session(server, tally, rng, rcvbuf=4096) as c:
        rid = c.next_id("r")
        if pause:
            # A paced stream and a pause shorter than send_timeout_s: nothing is
            # lost, nothing is cut.
            await c.request(rid, 200, 200)
            await c.until(lambda f: f["msg_type"] == "STREAM")
            await trio.sleep(rng.uniform(0.1, SEND_TIMEOUT_S / 2))
            await c.done_of(rid)
            tally.counts["stalls resumed"] += 1
            c.finish()
            return
        await c.request(rid, 1_000_000, 0)
        await c.until(lambda f: f["msg_type"] == "STREAM")
        # Stop reading until the server gives up on us: the kernel buffers fill
        # (megabytes on loopback), then send_timeout_s passes without progress and
        # the connection is reset.
        await trio.sleep(SEND_TIMEOUT_S + 8)
        code = None
        with trio.move_on_after(5):
            try:
                code = await c.until_closed()
            except trio.BrokenResourceError:
                code = -2
        if code is None:
            # Still streaming: the kernel buffers had not filled yet (a busy
            # machine). Not a fault of the server's; leave without draining them.
            tally.counts["stalls outlasted by the buffers (client left)"] += 1
            reset(c.stream)
        else:
            aborted = code in (-2, 1006)
            tally.counts[
                "stalls aborted by the server" if aborted else f"stalls closed {code}"
            ] += 1


async def raw_handshake(
    server: Server, stream: trio.SocketStream, rng: random.Random
) -> WSConnection:
    """Open a WebSocket byte by byte (wsproto), to be able to leave mid-frame."""
    ws = WSConnection(ConnectionType.CLIENT)
    target, subprotocols, headers = server.credentials(rng)
    request = Request(
        host="127.0.0.1", target=target, subprotocols=subprotocols, extra_headers=headers
    )
    await stream.send_all(ws.send(request))
    while True:
        ws.receive_data(await stream.receive_some())
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            return ws


async def vanishes(server: Server, tally: Tally, rng: random.Random) -> None:
    where = rng.choice(["mid-stream", "after-request", "mid-handshake", "mid-frame", "mid-close"])
    tally.counts[f"vanished {where}"] += 1
    if where in ("mid-stream", "after-request"):
        async with session(server, tally, rng) as c:
            rid = c.next_id("r")
            await c.request(rid, 100_000, rng.choice([0, 500]))
            if where == "mid-stream":
                for _ in range(rng.randint(1, 20)):
                    await c.recv()
            reset(c.stream)
            await trio.aclose_forcefully(c.stream)
        return
    stream = await tcp(server.port)
    async with stream:
        if where == "mid-handshake":
            await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
        else:
            ws = await raw_handshake(server, stream, rng)
            if where == "mid-frame":
                frame = ws.send(
                    TextMessage(data=json.dumps({"msg_type": "HEARTBEAT", "msg_id": "x" * 500}))
                )
                await stream.send_all(frame[: len(frame) // 2])
            else:
                await stream.send_all(ws.send(CloseConnection(code=1000)))
        reset(stream)


async def floods(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                # Bursts of 50 frames every 50 ms (up to 1000 frames/s, as TCP
                # allows) until the server closes: twenty times the rate limit,
                # without starving the other clients of this process.
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        for _ in range(50):
                            await c.ws.send_message(
                                json.dumps({"msg_type": "HEARTBEAT", "msg_id": c.next_id("f")})
                            )
                            tally.counts["frames sent"] += 1
                            tally.counts["flood frames"] += 1
                        await trio.sleep(0.05)

            nursery.start_soon(flood)
            code = None
            with trio.move_on_after(20):
                code = await c.until_closed()
            nursery.cancel_scope.cancel()
        if code is None:
            tally.surprise("a flood was not closed within 20 s")
        else:
            tally.counts[f"floods closed {code}"] += 1


async def trespasses(server: Server, tally: Tally, rng: random.Random) -> None:
    attempt = rng.choice(["wrong token", "no token", "foreign origin"])
    headers: list[tuple[bytes, bytes]] = []
    target = "/ws"
    if attempt == "wrong token":
        target = "/ws?token=not-the-token"
    elif attempt == "foreign origin":
        headers = [
            (b"origin", b"http://evil.example"),
            (b"authorization", f"Bearer {server.token}".encode()),
        ]
    stream = await tcp(server.port)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await wrap_client_stream(
                    nursery, stream, "127.0.0.1", target, extra_headers=headers
                )
                tally.surprise(f"{attempt}: let in")
            except ConnectionRejected as rejected:
                tally.counts[f"refused {rejected.status_code} ({attempt})"] += 1
            nursery.cancel_scope.cancel()
    except* (ConnectionRejected, ConnectionClosed, HandshakeError) as group:
        for exc in group.exceptions:
            if isinstance(exc, ConnectionRejected):
                tally.counts[f"refused {exc.status_code} ({attempt})"] += 1
    finally:
        await trio.aclose_forcefully(stream)


BEHAVIOURS: list[tuple[Callable[[Server, Tally, random.Random], Awaitable[None]], int]] = [
    (streams, 4),
    (interrupts, 5),
    (garbage, 3),
    (heartbeats, 2),
    (stalls, 1),
    (vanishes, 3),
    (floods, 1),
    (trespasses, 1),
]


async def client_loop(
    server: Server, tally: Tally, seed: int, deadline: float, skip: set[str]
) -> None:
    rng = random.Random(seed)
    chosen = [(b, w) for b, w in BEHAVIOURS if b.__name__ not in skip]
    behaviours, weights = zip(*chosen, strict=True)
    while trio.current_time() < deadline:
        behaviour = rng.choices(behaviours, weights)[0]
        tally.counts[f"ran {behaviour.__name__}"] += 1
        try:
            with trio.fail_after(OP_TIMEOUT_S):
                await behaviour(server, tally, rng)
        except* trio.TooSlowError:
            tally.surprise(f"{behaviour.__name__} took more than {OP_TIMEOUT_S} s")
        except* (ConnectionClosed, trio.BrokenResourceError, HandshakeError, OSError) as group:
            tally.surprise(f"{behaviour.__name__}: {group.exceptions[0]!r}")


# --------------------------------------------------------------------------- the server


@dataclass
class ServerProcess:
    proc: trio.Process
    token: str
    url: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    stats_updates: int = 0
    log_lines: int = 0
    secret_leaks: int = 0
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
            if token in line:
                self.secret_leaks += 1
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


# --------------------------------------------------------------------------- the run


def _ms(microseconds: float | None) -> float | None:
    return None if microseconds is None else microseconds / 1000


def percentile(values: list[float] | list[int], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "TRIO_AGENT_TOKEN": token}
    command = [
        sys.executable, "-m", "trio_agent", "serve",
        "--host", "127.0.0.1", "--port", "0",
        "--log-format", "json", "--log-level", "DEBUG", "--stats-interval-s", "0.25",
        "--send-timeout-s", str(SEND_TIMEOUT_S), "--idle-timeout-s", "30",
        "--max-message-bytes", str(MAX_MESSAGE_BYTES), "--max-input-bytes", str(MAX_INPUT_BYTES),
    ]  # fmt: skip
    log_dir = tempfile.TemporaryDirectory(prefix="trio-agent-soak-")
    log_path = args.server_log or Path(log_dir.name) / "server.log"
    with new_file(log_path) as log_sink:
        proc = await trio.lowlevel.open_process(command, stderr=log_sink, env=env, cwd=ROOT)
    log = await trio.open_file(log_path, "rb")
    server = ServerProcess(proc, token)
    tally = Tally()
    samples: list[Sample] = []
    result: dict[str, Any] = {"command": " ".join(sys.argv), "server_command": " ".join(command)}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.follow_log, log)
            with trio.fail_after(30):
                await server.listening.wait()
            assert server.url is not None
            port = int(server.url.rsplit(":", 1)[1].split("/")[0])
            target = Server(port, token)

            # Warm up: every behaviour once, so imports and first-use caches are
            # paid before the baseline is taken.
            warm = Tally()
            for i, (behaviour, _) in enumerate(BEHAVIOURS):
                if behaviour is not stalls:
                    with trio.fail_after(OP_TIMEOUT_S):
                        await behaviour(target, warm, random.Random(i))
            await wait_idle(server, None, 15)
            baseline_rss, baseline_fds = proc_sample(proc.pid)
            baseline_tasks = server.stats["tasks"]

            t0 = trio.current_time()
            cpu0 = (cpu_seconds(proc.pid), time.process_time(), os.getloadavg()[0])
            nursery.start_soon(watch, server, samples, t0, args.sample_interval)
            deadline = t0 + args.duration
            print(
                f"soak: {args.clients} clients for {args.duration:g} s against {server.url}",
                file=sys.stderr,
            )
            async with trio.open_nursery() as clients:
                for i in range(args.clients):
                    clients.start_soon(
                        client_loop, target, tally, args.seed + i, deadline, set(args.without)
                    )
            clients_done = trio.current_time() - t0
            cpu1 = (cpu_seconds(proc.pid), time.process_time(), os.getloadavg()[0])

            idle = await wait_idle(server, baseline_tasks, 20)
            end_rss, end_fds = proc_sample(proc.pid)
            end_stats = dict(server.stats)
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        while await server.read_more(log):  # the shutdown lines, to the last one
            pass
        await log.aclose()
        log_dir.cleanup()

    counts = tally.counts
    result.update(
        duration_s=args.duration,
        clients=args.clients,
        clients_finished_after_s=round(clients_done, 1),
        server_cpu_percent=round(100 * (cpu1[0] - cpu0[0]) / clients_done),
        soak_cpu_percent=round(100 * (cpu1[1] - cpu0[1]) / clients_done),
        load_average=(round(cpu0[2], 1), round(cpu1[2], 1)),
        cpu_cores=os.cpu_count(),
        frames_sent=counts["frames sent"],
        frames_received=counts["frames received"],
        requests=counts["requests"],
        interrupts=counts["interrupts"],
        ack_ms_p50=percentile(tally.ack_ms, 50),
        ack_ms_p99=percentile(tally.ack_ms, 99),
        ack_ms_max=max(tally.ack_ms, default=None),
        heartbeat_ms_p99=percentile(tally.heartbeat_ms, 99),
        server_ack_ms_p50=_ms(percentile(server.ack_us, 50)),
        server_ack_ms_p99=_ms(percentile(server.ack_us, 99)),
        bad_frames_tried=counts["bad frames tried"],
        flood_frames=counts["flood frames"],
        disconnects={
            k: v
            for k, v in sorted(counts.items())
            if k.startswith(("vanished", "stalls", "floods", "closed"))
        },
        refusals={k: v for k, v in sorted(counts.items()) if k.startswith("refused")},
        done_statuses={k: v for k, v in sorted(counts.items()) if k.startswith("DONE")},
        behaviours={k[4:]: v for k, v in sorted(counts.items()) if k.startswith("ran ")},
        sessions_opened=counts["sessions"],
        surprises=counts["surprises"],
        surprise_samples=tally.surprises,
        guarantees_violated=len(tally.violations),
        violation_samples=tally.violations[:20],
        baseline={
            "tasks": baseline_tasks,
            "fds": baseline_fds,
            "rss_mb": round(baseline_rss / 2**20, 1),
        },
        peak={
            "tasks": max((s.tasks for s in samples), default=None),
            "sessions": max((s.sessions for s in samples), default=None),
            "fds": max((s.fds for s in samples), default=None),
            "rss_mb": round(max((s.rss for s in samples), default=0) / 2**20, 1),
        },
        end={
            "tasks": end_stats.get("tasks"),
            "sessions": end_stats.get("sessions"),
            "fds": end_fds,
            "rss_mb": round(end_rss / 2**20, 1),
        },
        rss_mb_over_time={
            f"{sample.t:.0f}s": round(sample.rss / 2**20, 1)
            for sample in samples[:: max(1, len(samples) // 6)]
        },
        back_to_idle=idle,
        leaked_tasks=(end_stats.get("tasks") or 0) - baseline_tasks,
        leaked_fds=end_fds - baseline_fds,
        rss_growth_mb=round((end_rss - baseline_rss) / 2**20, 1),
        server_log_lines=server.log_lines,
        server_warnings=dict(server.warnings.most_common()),
        server_warning_samples=server.warning_samples,
        secrets_in_logs=server.secret_leaks,
        server_exit_code=proc.returncode,
    )
    result["ok"] = (
        result["guarantees_violated"] == 0
        and result["leaked_tasks"] == 0
        and result["leaked_fds"] == 0
        and result["secrets_in_logs"] == 0
        and idle
        and proc.returncode == 0
    )
    return result


def report(result: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, dict):
            return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        return "-" if value is None else str(value)

    rows = [
        ("duration", f"{result['duration_s']:g} s, {result['clients']} clients"),
        (
            "CPU: server / soak clients, load avg",
            f"{result['server_cpu_percent']}% / {result['soak_cpu_percent']}% of one core, "
            f"load {result['load_average'][0]} -> {result['load_average'][1]} "
            f"on {result['cpu_cores']} cores",
        ),
        ("sessions opened", result["sessions_opened"]),
        ("frames sent / received", f"{result['frames_sent']} / {result['frames_received']}"),
        ("requests", result["requests"]),
        ("DONE by status", result["done_statuses"]),
        ("interrupts", result["interrupts"]),
        (
            "INTERRUPT -> ACK p50 / p99 / max (ms)",
            f"{fmt(result['ack_ms_p50'])} / {fmt(result['ack_ms_p99'])} / {fmt(result['ack_ms_max'])}",
        ),
        (
            "  in the server: read -> written p50 / p99 (ms)",
            f"{fmt(result['server_ack_ms_p50'])} / {fmt(result['server_ack_ms_p99'])}",
        ),
        ("heartbeat RTT p99 (ms)", result["heartbeat_ms_p99"]),
        ("bad frames tried", result["bad_frames_tried"]),
        ("flood frames (over the rate limit)", result["flood_frames"]),
        ("disconnects", result["disconnects"]),
        ("handshakes refused", result["refusals"]),
        ("surprises", result["surprises"]),
        ("server warnings", result["server_warnings"]),
        (
            "live tasks: idle / peak / end",
            f"{result['baseline']['tasks']} / {result['peak']['tasks']} / {result['end']['tasks']}",
        ),
        (
            "open fds: idle / peak / end",
            f"{result['baseline']['fds']} / {result['peak']['fds']} / {result['end']['fds']}",
        ),
        ("RSS MB over the run", result["rss_mb_over_time"]),
        (
            "RSS MB: idle / peak / end",
            f"{result['baseline']['rss_mb']} / {result['peak']['rss_mb']} / {result['end']['rss_mb']}",
        ),
        ("leaked tasks", result["leaked_tasks"]),
        ("leaked fds", result["leaked_fds"]),
        ("RSS growth (MB)", result["rss_growth_mb"]),
        ("secrets in server logs", result["secrets_in_logs"]),
        ("guarantees violated", result["guarantees_violated"]),
        ("server exit code", result["server_exit_code"]),
        ("verdict", "OK" if result["ok"] else "FAILED"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {fmt(value)}" for name, value in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of soak (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the first client")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="watcher period (s)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=[b.__name__ for b, _ in BEHAVIOURS],
        help="leave a behaviour out (repeatable)",
    )
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        parser.error("the watcher reads /proc: Linux only")
    result = trio.run(soak, args)
    print(report(result))
    for sample in (
        result["violation_samples"] + result["surprise_samples"] + result["server_warning_samples"]
    ):
        print("  ", sample)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
