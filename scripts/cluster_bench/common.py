"""What the figures of the cluster benchmark share: the counts, the node processes,
a session that resumes on any node and times its INTERRUPT_ACKs, the verdicts.

Every node is ``trio-agent serve`` as shipped, started as its own process on
loopback by :class:`interrupt_bench.servers.RunningServer` (measured from outside
with psutil), and driven by the interrupt benchmark's asyncio load generator, so
the client costs little and is the same for every figure.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import psutil
from interrupt_bench.resuming import ResumingSession
from interrupt_bench.servers import HOST, PATH, RunningServer, ServerSpec
from interrupt_bench.wsclient import HandshakeFailed

#: No single wait may take longer than this (a node killed mid-wait included).
WAIT_S = 20.0


@dataclass(frozen=True)
class Budget:
    """Every count a run uses. ``--quick`` picks the small ones."""

    #: Frames per round of the throughput figure, A B pairs per session count.
    throughput_frames: int = 20_000
    throughput_rounds: int = 4
    #: INTERRUPT trials, local and cross-node each (also the owner-alive resumes).
    interrupt_trials: int = 100
    #: Resumes whose owner was killed (each kills a node of its own).
    owner_dead_trials: int = 10
    #: Random drops and node kills through HAProxy.
    drops: int = 1000
    kills: int = 3
    drop_sessions: int = 20
    drop_words: int = 300
    drop_words_per_s: float = 150.0
    #: Sessions per step of the scale figure (each streaming 2 words/s).
    scale_steps: tuple[int, ...] = (200, 300, 400, 500, 650, 800, 1000, 1300, 1600, 2000, 3000)
    scale_window_s: float = 4.0
    scale_interrupts: int = 60
    #: The ACK p99 a step must stay under to count.
    ack_threshold_ms: float = 50.0
    #: ``--node-lease-s`` of every node.
    lease_s: float = 1.0
    seed: int = 1


FULL = Budget()
QUICK = Budget(
    throughput_frames=4_000,
    throughput_rounds=1,
    interrupt_trials=10,
    owner_dead_trials=2,
    drops=50,
    kills=1,
    drop_sessions=5,
    scale_steps=(100, 200),
    scale_window_s=2.0,
    scale_interrupts=20,
)


def node_spec(key: str, label: str, *flags: str) -> ServerSpec:
    """``trio-agent serve`` on a free port with ``flags``."""
    return ServerSpec(
        key, label, label, (sys.executable, "-m", "trio_agent", "serve", "--port", "{port}", *flags)
    )


def cluster_flags(redis_url: str, node_id: str, lease_s: float) -> tuple[str, ...]:
    return ("--redis-url", redis_url, "--node-id", node_id, "--node-lease-s", f"{lease_s:g}")


class ServerTree(RunningServer):
    """A server that may be a supervisor with worker processes (``--workers N``): it
    is ready when any of its processes listens, and its CPU and memory are those of
    all of them."""

    def _processes(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    async def wait_ready(self, limit_s: float = 60.0) -> None:
        deadline = time.monotonic() + limit_s
        while not self._listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.label} exited; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.spec.label} did not listen within {limit_s} s")
            await asyncio.sleep(0.05)

    def _listening(self) -> bool:
        listening = 0
        for process in self._processes():
            try:
                connections = process.net_connections(kind="tcp")
            except psutil.Error:
                continue
            listening += any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in connections
            )
        workers = len(self._processes()) - 1
        return listening >= max(1, workers)

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self._processes():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for process in self._processes():
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def kill(self) -> None:
        """SIGKILL, as in a crash (no drain, no lease released)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass(eq=False)
class ClusterSession(ResumingSession):
    """A :class:`ResumingSession` that can also INTERRUPT, timing the ACK, and resume
    on another port (another node) than the one it is on."""

    #: INTERRUPT ``msg_id`` -> [sent_at, ack_at or None, future resolved by the ACK].
    interrupts: dict[str, list[Any]] = field(default_factory=dict)
    #: request id -> when its (first) DONE arrived.
    done_at: dict[str, float] = field(default_factory=dict)

    @classmethod
    async def open_on(cls, port: int) -> ClusterSession:
        session = cls(HOST, port, PATH)
        await session._connect()
        if session.token is None:
            raise RuntimeError("the server's SESSION offers no resume token")
        return session

    @property
    def closed(self) -> asyncio.Future[int | None]:
        assert self.client is not None
        return self.client.closed

    def interrupt(self, request_id: str) -> asyncio.Future[None]:
        msg_id = f"i{len(self.interrupts)}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.interrupts[msg_id] = [time.perf_counter(), None, future]
        self._send(
            {
                "msg_type": "INTERRUPT",
                "msg_id": msg_id,
                "session_id": self.session_id,
                "request_id": request_id,
                "payload": {"reason": "bench"},
            }
        )
        return future

    def ack_ms(self, future: asyncio.Future[None]) -> float | None:
        for sent_at, ack_at, f in self.interrupts.values():
            if f is future and ack_at is not None:
                return float((ack_at - sent_at) * 1e3)
        return None

    def lost_connection(self) -> dict[str, int]:
        """The connection ended without our doing (its node was killed): frames it may
        still deliver are not counted; the ``last_seq`` of the replies still running."""
        self._generation += 1
        return {rid: r.last_seq for rid, r in self.replies.items() if not r.ended}

    async def resume_on(self, port: int, last_seq: dict[str, int], attempts: int = 1) -> bool:
        """Connect to ``port`` and RESUME, trying again (``attempts``, 0.1 s apart) when
        the connection is refused or closed before the handshake (a node just killed,
        HAProxy not yet aware). False, with the reason in ``errors``, when it fails."""
        self.port = port
        for attempt in range(attempts):
            try:
                await asyncio.wait_for(self.resume(last_seq), WAIT_S)
                return True
            except (OSError, HandshakeFailed) as exc:
                if attempt == attempts - 1:
                    self.errors.append(f"resume: {exc!r}")
                    return False
                self.resumes.pop()
                await asyncio.sleep(0.1)
            except (TimeoutError, RuntimeError) as exc:
                self.errors.append(f"resume: {exc!r}")
                return False
        return False

    def _on_message(self, generation: int, text: str, at: float) -> None:
        if generation == self._generation and '"DONE"' in text:
            rid = orjson.loads(text).get("request_id")
            if isinstance(rid, str):
                self.done_at.setdefault(rid, at)
        if generation == self._generation and '"INTERRUPT_ACK"' in text:
            ref = orjson.loads(text).get("ref")
            entry = self.interrupts.get(ref) if isinstance(ref, str) else None
            if entry is not None and entry[1] is None:
                entry[1] = at
                entry[2].set_result(None)
        super()._on_message(generation, text, at)


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def row(figure: str, measured: str, target: str, met: bool | None) -> list[str]:
    return [figure, measured, target, verdict(met)]


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"
