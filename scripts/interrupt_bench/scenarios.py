"""The workloads. Each is a :class:`Scenario`: a name, the servers it runs against, a
``run`` that drives one server and returns its figures, and the ratios it computes
between servers of the same run.

To add a workload (an upstream-LLM row, say), write a subclass and add it to
:data:`SCENARIOS`; if it needs a server started differently, add a
:class:`~interrupt_bench.servers.ServerSpec` for it and name it in ``servers``.
Nothing else changes: the runner, the table, the JSON and the plot read what the
scenario declares.

Every count and every wait here is bounded (``Budget`` and ``TIMEOUT_S``), and
every connection goes to 127.0.0.1.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from .conversation import Conversation, RequestTrace
from .servers import HOST, PATH, RunningServer
from .stats import ratio, summarize

#: No single wait in a scenario may take longer than this.
TIMEOUT_S = 20.0

#: Words of a request that should outlive its trial. (Not more: lorem builds its word
#: list up front, so a million words would cost the server ~0.2 s per request.)
ENDLESS = 50_000


@dataclass(frozen=True)
class Budget:
    """Every count and duration a run uses. ``--quick`` and the flags pick these."""

    sessions: int = 20
    trials: int = 25
    throughput_frames: int = 20_000
    throughput_rounds: int = 3
    #: Barge-in trials are split over this many rounds, servers in turn.
    latency_rounds: int = 3
    slow_reader_trials: int = 8
    slow_reader_pause_s: float = 0.5
    scale_sessions: int = 1000
    scale_words_per_s: float = 2.0
    scale_interrupts: int = 100
    #: Scale runs this many times, servers in turn (interrupts are per round).
    scale_rounds: int = 2
    scale_window_s: float = 4.0
    #: How long every session streams before memory is measured and interrupts start.
    scale_settle_s: float = 1.0
    #: Interrupts per agent (openai and lorem) in the upstream workload.
    upstream_rounds: int = 200
    #: HEARTBEAT round trips on an idle session, split over ``latency_rounds``.
    heartbeats: int = 300
    seed: int = 1


FULL = Budget()
QUICK = Budget(
    sessions=10,
    trials=8,
    throughput_frames=10_000,
    throughput_rounds=1,
    latency_rounds=1,
    slow_reader_trials=3,
    scale_sessions=300,
    scale_interrupts=60,
    scale_rounds=1,
    scale_window_s=2.0,
    upstream_rounds=40,
    heartbeats=60,
)


@dataclass(frozen=True)
class Column:
    """One column of a scenario's table: a header and a dotted path into the figures."""

    header: str
    path: str
    digits: int = 2

    def cell(self, figures: dict[str, Any]) -> str:
        value: Any = figures
        for part in self.path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.{self.digits}f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)


#: The columns every workload with interrupts ends its table with: all must be 0.
PROBLEM_COLUMNS = (
    Column("stale", "stale_frames"),
    Column("errors", "errors"),
    Column("violations", "violations"),
)


@dataclass
class Tally:
    """What can go wrong in a run, counted: it must all be zero."""

    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    stale_frames: int = 0

    def absorb(self, conversation: Conversation) -> None:
        self.violations.extend(str(v) for v in conversation.finish())
        self.stale_frames += sum(t.stale_frames for t in conversation.requests.values())
        self.errors.extend(
            f"ERROR {e.get('payload', {}).get('code')}: {e.get('payload', {}).get('message')}"
            for e in conversation.errors
        )

    def figures(self) -> dict[str, Any]:
        return {
            "errors": len(self.errors),
            "violations": len(self.violations),
            "stale_frames": self.stale_frames,
            "first_problems": (self.errors + self.violations)[:5],
        }


async def bounded(
    awaitable: Awaitable[Any], what: str, tally: Tally, limit_s: float = TIMEOUT_S
) -> bool:
    """Await within ``limit_s``; count a timeout as an error instead of hanging.

    Shielded: a timeout must not cancel the futures it waited for (a late ACK is
    still recorded, and a later wait on the same DONE still works).
    """
    try:
        await asyncio.wait_for(asyncio.shield(awaitable), limit_s)
    except TimeoutError:
        tally.errors.append(f"timed out waiting for {what}")
        return False
    return True


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else (end - start) * 1e3


def _present(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


class Scenario(abc.ABC):
    """A named workload run against each of ``servers`` in turn."""

    name: ClassVar[str]
    title: ClassVar[str]
    #: Keys of :data:`~interrupt_bench.servers.SERVERS`, in table order; the first
    #: is the server under test, the others are what it is compared with.
    servers: ClassVar[tuple[str, ...]]
    columns: ClassVar[tuple[Column, ...]]
    #: Figures holding latency samples in ms, for the CDF plot.
    cdf: ClassVar[str | None] = None

    def rounds(self, budget: Budget) -> int:
        """How many times the runner drives every server, in turn (A B C, A B C, ...).
        More than one spreads the noise of a shared machine over all servers alike;
        :meth:`merge` then makes one set of figures per server."""
        return 1

    @abc.abstractmethod
    async def run(self, server: RunningServer, budget: Budget) -> dict[str, Any]:
        """Drive ``server`` and return its figures (a JSON-able dict)."""

    def merge(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """One server's figures from its rounds (the default: the only one)."""
        return runs[0]

    def ratios(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Ratios between the servers of this run (computed, never measured)."""
        return {}


def _latency_ratios(
    results: dict[str, dict[str, Any]], subject: str, figures: Sequence[str], stats: Sequence[str]
) -> dict[str, Any]:
    """``{baseline}_over_{subject}.{figure}_{stat}`` for every other server: how many
    times higher the baseline's latency is."""
    out: dict[str, Any] = {}
    mine = results.get(subject)
    if mine is None:
        return out
    for key, theirs in results.items():
        if key == subject:
            continue
        out[f"{key}_over_{subject}"] = {
            f"{figure}_{stat}": ratio(theirs[figure][stat], mine[figure][stat])
            for figure in figures
            for stat in stats
        }
    return out


# --------------------------------------------------------------------------- barge-in


class BargeIn(Scenario):
    """S sessions; each runs a fast and a slow request, interrupts one after 20-200 ms,
    then at once sends a new request."""

    name = "barge-in"
    title = "Barge-in: interrupt under load, then a new request"
    servers = ("trio-agent", "fifo", "asyncio", "fastapi", "fastapi-websockets")
    cdf = "ack_ms"
    columns = (
        Column("trials", "ack_ms.count"),
        Column("ACK p50 ms", "ack_ms.p50"),
        Column("ACK p90", "ack_ms.p90"),
        Column("ACK p99", "ack_ms.p99"),
        Column("ACK max", "ack_ms.max"),
        Column("DONE p50", "done_ms.p50"),
        Column("DONE p99", "done_ms.p99"),
        Column("turn p50", "turnaround_ms.p50"),
        Column("turn p99", "turnaround_ms.p99"),
        Column("frames INT->ACK p50", "frames_before_ack.p50", 0),
        Column("max", "frames_before_ack.max", 0),
        *PROBLEM_COLUMNS,
    )

    #: Words of the request sent right after the INTERRUPT (the user's new turn).
    new_words = 20
    slow_words_per_s = 10.0

    def __init__(self) -> None:
        self._rounds_run: dict[str, int] = {}

    def rounds(self, budget: Budget) -> int:
        return budget.latency_rounds

    async def run(self, server: RunningServer, budget: Budget) -> dict[str, Any]:
        """One round: ``trials / rounds`` trials in each of the S sessions. Returns the
        raw trials; :meth:`merge` summarizes the rounds together."""
        trials: list[dict[str, Any]] = []
        tally = Tally()
        done = self._rounds_run.get(server.spec.key, 0)
        self._rounds_run[server.spec.key] = done + 1
        count = -(-budget.trials // budget.latency_rounds)  # rounded up
        seeds = range(done * budget.sessions, (done + 1) * budget.sessions)
        await asyncio.gather(
            *(self._session(server, budget, seed, count, trials, tally) for seed in seeds)
        )
        return {"sessions": budget.sessions, "trials": trials, **tally.figures()}

    def merge(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        trials = [t for r in runs if "trials" in r for t in r["trials"]]
        figures: dict[str, Any] = {
            "sessions": runs[0].get("sessions"),
            "rounds": len(runs),
            "ack_ms": summarize(_present([t["ack_ms"] for t in trials])),
            "done_ms": summarize(_present([t["done_ms"] for t in trials])),
            "turnaround_ms": summarize(_present([t["turnaround_ms"] for t in trials])),
            "frames_before_ack": summarize([t["frames_before_ack"] for t in trials], digits=0),
            "victim_stale_frames": sum(t["victim_stale"] for t in trials),
        }
        for kind in ("fast", "slow"):
            mine = [t for t in trials if t["victim"] == kind]
            figures[f"ack_ms_{kind}_victim"] = summarize(_present([t["ack_ms"] for t in mine]))
            figures[f"done_ms_{kind}_victim"] = summarize(_present([t["done_ms"] for t in mine]))
        for key in ("errors", "violations", "stale_frames"):
            figures[key] = sum(r.get(key, 0) for r in runs)
        figures["first_problems"] = [p for r in runs for p in r.get("first_problems", [])][:5]
        figures["samples"] = {"ack_ms": sorted(round(t["ack_ms"], 4) for t in trials)}
        figures["load_average_after"] = [r.get("load_average_after") for r in runs]
        return figures

    async def _session(
        self,
        server: RunningServer,
        budget: Budget,
        index: int,
        count: int,
        trials: list[dict[str, Any]],
        tally: Tally,
    ) -> None:
        rng = random.Random(budget.seed * 7919 + index)
        conversation = await Conversation.open(HOST, server.port, PATH)
        try:
            for k in range(count):
                fast = conversation.request(f"f{k}", words=ENDLESS, words_per_s=0)
                slow = conversation.request(
                    f"s{k}", words=ENDLESS, words_per_s=self.slow_words_per_s
                )
                await asyncio.sleep(rng.uniform(0.020, 0.200))
                victim, other = (fast, slow) if rng.random() < 0.5 else (slow, fast)
                cut = conversation.interrupt(victim.request_id)
                new = conversation.request(f"n{k}", words=self.new_words, words_per_s=0)
                if not await bounded(
                    asyncio.gather(cut.acked, victim.done, new.done), "ACK and DONEs", tally
                ):
                    return
                trials.append(
                    {
                        "victim": "fast" if victim is fast else "slow",
                        "ack_ms": _ms(cut.sent_at, cut.ack_at),
                        "done_ms": _ms(cut.sent_at, victim.done_at),
                        "turnaround_ms": _ms(cut.sent_at, new.first_frame_at),
                        "frames_before_ack": cut.frames_before_ack,
                        "victim_stale": victim.stale_frames,
                    }
                )
                # End the trial: stop whatever still runs (not measured).
                end = conversation.interrupt(None)
                if not await bounded(asyncio.gather(end.acked, other.done), "cleanup", tally):
                    return
        finally:
            tally.absorb(conversation)
            await conversation.close()

    def ratios(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return _latency_ratios(
            results, "trio-agent", ("ack_ms", "done_ms", "turnaround_ms"), ("p50", "p99")
        )


# --------------------------------------------------------------------------- throughput


class Throughput(Scenario):
    """One session, then S sessions, streaming as fast as they can."""

    name = "throughput"
    title = "Throughput: STREAM frames as fast as the server sends them"
    servers = ("trio-agent", "fifo", "asyncio", "fastapi", "fastapi-websockets", "ceiling")
    columns = (
        Column("1 session frames/s", "one.frames_per_s", 0),
        Column("MB/s", "one.mbytes_per_s"),
        Column("CPU s/100k", "one.server_cpu_s_per_100k_frames"),
        Column("% ceiling", "one.percent_of_ceiling", 0),
        Column("S sessions frames/s", "many.frames_per_s", 0),
        Column("MB/s", "many.mbytes_per_s"),
        Column("CPU s/100k", "many.server_cpu_s_per_100k_frames"),
        Column("% ceiling", "many.percent_of_ceiling", 0),
        Column("client CPU %", "many.client_cpu_percent", 0),
        Column("errors", "errors"),
    )

    def rounds(self, budget: Budget) -> int:
        return budget.throughput_rounds

    def merge(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """The best round of each part: the rate the server reached when the machine
        let it. (Every round is kept under ``rounds``.)"""
        measured = [r for r in runs if "one" in r]
        if not measured:  # every round failed: report the failure
            return runs[0]
        merged: dict[str, Any] = {"rounds": runs}
        for part in ("one", "many"):
            merged[part] = dict(
                max((r[part] for r in measured), key=lambda f: f["frames_per_s"] or 0)
            )
        for key in ("errors", "violations", "stale_frames"):
            merged[key] = sum(r.get(key, 0) for r in runs)
        merged["first_problems"] = [p for r in runs for p in r.get("first_problems", [])][:5]
        return merged

    async def run(self, server: RunningServer, budget: Budget) -> dict[str, Any]:
        tally = Tally()
        figures: dict[str, Any] = {
            "one": await self._measure(server, 1, budget.throughput_frames, tally),
            "many": await self._measure(server, budget.sessions, budget.throughput_frames, tally),
        }
        figures.update(tally.figures())
        return figures

    async def _measure(
        self, server: RunningServer, sessions: int, frames: int, tally: Tally
    ) -> dict[str, Any]:
        # The checker is off here: the client does as little as it can per frame.
        conversations = await asyncio.gather(
            *(Conversation.open(HOST, server.port, PATH, check=False) for _ in range(sessions))
        )
        try:
            warmups = [c.request("warmup", words=200, words_per_s=0) for c in conversations]
            await bounded(asyncio.gather(*(t.done for t in warmups)), "warm-up", tally)
            me = psutil.Process()
            client_cpu = sum(me.cpu_times()[:2])
            server_cpu = server.cpu_seconds()
            started = time.perf_counter()
            traces = [
                c.request("measured", words=frames // sessions, words_per_s=0)
                for c in conversations
            ]
            # Bounded, but never by less than 500 frames/s.
            limit = TIMEOUT_S + frames / 500
            await bounded(asyncio.gather(*(t.done for t in traces)), "DONEs", tally, limit)
            ended = max((t.done_at or started) for t in traces)
            server_cpu = server.cpu_seconds() - server_cpu
            client_cpu = sum(me.cpu_times()[:2]) - client_cpu
        finally:
            await asyncio.gather(*(c.close() for c in conversations))
        seconds = ended - started
        received = sum(t.frames for t in traces)
        size = sum(t.stream_bytes for t in traces)
        return {
            "sessions": sessions,
            "frames": received,
            "seconds": round(seconds, 3),
            "frames_per_s": round(received / seconds, 1) if seconds > 0 else None,
            "mbytes_per_s": round(size / seconds / 1e6, 3) if seconds > 0 else None,
            "mean_frame_bytes": round(size / received, 1) if received else None,
            "server_cpu_s": round(server_cpu, 3),
            "server_cpu_s_per_100k_frames": round(server_cpu / received * 1e5, 3)
            if received
            else None,
            "server_cpu_percent": round(100 * server_cpu / seconds, 1) if seconds > 0 else None,
            "client_cpu_percent": round(100 * client_cpu / seconds, 1) if seconds > 0 else None,
        }

    def ratios(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        ceiling = results.get("ceiling")
        out: dict[str, Any] = {}
        if ceiling is None:
            return out
        for key, figures in results.items():
            for part in ("one", "many"):
                percent = ratio(
                    figures[part]["frames_per_s"], ceiling[part]["frames_per_s"], digits=3
                )
                figures[part]["percent_of_ceiling"] = (
                    round(percent * 100, 1) if percent is not None else None
                )
                out.setdefault(f"{key}_percent_of_ceiling", {})[part] = figures[part][
                    "percent_of_ceiling"
                ]
        return out


# --------------------------------------------------------------------------- slow reader


class SlowReader(Scenario):
    """A client stops reading while a request streams at full rate, then interrupts."""

    name = "slow-reader"
    title = "Slow reader: no reads for a while, then INTERRUPT"
    servers = (
        "trio-agent",
        "fifo",
        "asyncio",
        "fastapi",
        "fastapi-websockets",
        "lowat",
        "fastapi-lowat",
    )
    cdf = "ack_ms"
    columns = (
        Column("trials", "ack_ms.count"),
        Column("ACK p50 ms", "ack_ms.p50"),
        Column("ACK max", "ack_ms.max"),
        Column("DONE p50", "done_ms.p50"),
        Column("frames INT->ACK p50", "frames_before_ack.p50", 0),
        Column("KiB INT->ACK p50", "kib_before_ack.p50", 0),
        *PROBLEM_COLUMNS,
    )

    #: The client's receive buffer: fixed, so what it holds is the same for every
    #: server and what differs is what each server keeps queued (a kernel left to
    #: autotune would let this client buffer several hundred KiB).
    receive_buffer = 64 * 1024

    async def run(self, server: RunningServer, budget: Budget) -> dict[str, Any]:
        tally = Tally()
        trials: list[dict[str, Any]] = []
        conversation = await Conversation.open(
            HOST, server.port, PATH, receive_buffer=self.receive_buffer
        )
        assert conversation.client is not None
        client = conversation.client
        try:
            for k in range(budget.slow_reader_trials):
                trace = conversation.request(f"r{k}", words=ENDLESS, words_per_s=0)
                await asyncio.sleep(0.05)  # let it reach full rate
                client.pause_reading()
                await asyncio.sleep(budget.slow_reader_pause_s)
                client.resume_reading()
                received_at_cut = client.bytes_received
                cut = conversation.interrupt(trace.request_id)
                if not await bounded(asyncio.gather(cut.acked, trace.done), "ACK", tally):
                    break
                trials.append(
                    {
                        "ack_ms": _ms(cut.sent_at, cut.ack_at),
                        "done_ms": _ms(cut.sent_at, trace.done_at),
                        "frames_before_ack": cut.frames_before_ack,
                        "kib_before_ack": (client.bytes_received - received_at_cut) / 1024,
                    }
                )
        finally:
            tally.absorb(conversation)
            await conversation.close()
        figures: dict[str, Any] = {
            "pause_s": budget.slow_reader_pause_s,
            "client_receive_buffer": self.receive_buffer,
            "ack_ms": summarize(_present([t["ack_ms"] for t in trials])),
            "done_ms": summarize(_present([t["done_ms"] for t in trials])),
            "frames_before_ack": summarize([t["frames_before_ack"] for t in trials], digits=0),
            "kib_before_ack": summarize([t["kib_before_ack"] for t in trials], digits=0),
        }
        figures.update(tally.figures())
        figures["samples"] = {"ack_ms": sorted(round(t["ack_ms"], 4) for t in trials)}
        return figures

    def ratios(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return _latency_ratios(results, "trio-agent", ("ack_ms", "kib_before_ack"), ("p50", "max"))


# --------------------------------------------------------------------------- scale


class Scale(Scenario):
    """Many sessions streaming slowly; a sample of them is interrupted."""

    name = "scale"
    title = "Scale: many slow sessions, a sample interrupted"
    servers = ("trio-agent", "fifo", "asyncio", "fastapi", "fastapi-websockets")
    cdf = "ack_ms"
    columns = (
        Column("sessions", "sessions_open"),
        Column("frames/s", "frames_per_s", 0),
        Column("% of pace", "delivered_percent", 0),
        Column("server CPU %", "server_cpu_percent", 0),
        Column("ACK n", "ack_ms.count"),
        Column("ACK p50 ms", "ack_ms.p50"),
        Column("ACK p99", "ack_ms.p99"),
        Column("ACK max", "ack_ms.max"),
        Column("RSS KiB/session", "rss_kib_per_session", 1),
        *PROBLEM_COLUMNS,
    )

    #: Connections opened at once while ramping up (keeps the accept queue short).
    ramp_batch = 50

    async def run(self, server: RunningServer, budget: Budget) -> dict[str, Any]:
        tally = Tally()
        rng = random.Random(budget.seed)
        rss_idle = server.rss_bytes()
        conversations: list[Conversation] = []
        starts: list[Awaitable[None]] = []
        for start in range(0, budget.scale_sessions, self.ramp_batch):
            count = min(self.ramp_batch, budget.scale_sessions - start)
            opened = await asyncio.gather(
                *(Conversation.open(HOST, server.port, PATH) for _ in range(count)),
                return_exceptions=True,
            )
            for result in opened:
                if isinstance(result, BaseException):
                    tally.errors.append(f"connect: {result!r}")
                else:
                    conversations.append(result)
                    starts.append(self._start(result, budget, rng))
        # Requests start at random moments within one word interval, as independent
        # users would: sessions opened together must not tick in lockstep.
        await asyncio.gather(*starts)
        await asyncio.sleep(budget.scale_settle_s)  # every session streams before we look
        rss_loaded = server.rss_bytes()
        frames_before = sum(c.stream_frames for c in conversations)
        cpu_before = server.cpu_seconds()
        window_start = time.perf_counter()
        sample = rng.sample(conversations, min(budget.scale_interrupts, len(conversations)))
        cuts = await asyncio.gather(
            *(self._cut(c, rng.uniform(0, budget.scale_window_s), tally) for c in sample)
        )
        # Let the window run to its end so frames/s and CPU cover the whole of it.
        await asyncio.sleep(max(0.0, window_start + budget.scale_window_s - time.perf_counter()))
        window = time.perf_counter() - window_start
        cpu = server.cpu_seconds() - cpu_before
        frames = sum(c.stream_frames for c in conversations) - frames_before
        await self._close_all(conversations, tally)
        figures: dict[str, Any] = {
            "sessions_wanted": budget.scale_sessions,
            "sessions_open": len(conversations),
            "words_per_s_each": budget.scale_words_per_s,
            "frames_per_s": round(frames / window, 1),
            # Below 100: the server (or the machine) could not keep up with the pace.
            "delivered_percent": round(
                100 * frames / window / (len(conversations) * budget.scale_words_per_s), 1
            )
            if conversations
            else None,
            "server_cpu_percent": round(100 * cpu / window, 1),
            "rss_idle_mib": round(rss_idle / 2**20, 1),
            "rss_loaded_mib": round(rss_loaded / 2**20, 1),
            "rss_kib_per_session": round((rss_loaded - rss_idle) / 1024 / len(conversations), 1)
            if conversations
            else None,
            "ack_ms": summarize(_present([c[0] for c in cuts])),
            "done_ms": summarize(_present([c[1] for c in cuts])),
        }
        figures.update(tally.figures())
        figures["samples"] = {
            "ack_ms": sorted(round(c[0], 4) for c in cuts if c[0] is not None),
            "done_ms": sorted(round(c[1], 4) for c in cuts if c[1] is not None),
        }
        return figures

    def rounds(self, budget: Budget) -> int:
        return budget.scale_rounds

    def merge(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Latencies of every round together; rates and CPU averaged; memory from the
        round that grew it most (the first: later rounds reuse what it allocated)."""
        measured = [r for r in runs if "samples" in r]
        if not measured:
            return runs[0]
        merged: dict[str, Any] = {"rounds": runs}
        for key in ("sessions_wanted", "words_per_s_each"):
            merged[key] = measured[0][key]
        merged["sessions_open"] = min(r["sessions_open"] for r in measured)
        for key in ("frames_per_s", "delivered_percent", "server_cpu_percent"):
            values = [r[key] for r in measured if r[key] is not None]
            merged[key] = round(sum(values) / len(values), 1) if values else None
        grown = max(measured, key=lambda r: r["rss_kib_per_session"] or 0)
        for key in ("rss_idle_mib", "rss_loaded_mib", "rss_kib_per_session"):
            merged[key] = grown[key]
        samples = {
            k: sorted(v for r in measured for v in r["samples"][k]) for k in ("ack_ms", "done_ms")
        }
        merged["ack_ms"] = summarize(samples["ack_ms"])
        merged["done_ms"] = summarize(samples["done_ms"])
        merged["samples"] = samples
        for key in ("errors", "violations", "stale_frames"):
            merged[key] = sum(r.get(key, 0) for r in runs)
        merged["first_problems"] = [p for r in runs for p in r.get("first_problems", [])][:5]
        return merged

    async def _start(self, conversation: Conversation, budget: Budget, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0, 1 / budget.scale_words_per_s))
        conversation.request("w", words=ENDLESS, words_per_s=budget.scale_words_per_s)

    async def _cut(
        self, conversation: Conversation, delay: float, tally: Tally
    ) -> tuple[float | None, float | None]:
        await asyncio.sleep(delay)
        trace: RequestTrace = conversation.requests["w"]
        cut = conversation.interrupt("w")
        await bounded(asyncio.gather(cut.acked, trace.done), "scale ACK", tally)
        return _ms(cut.sent_at, cut.ack_at), _ms(cut.sent_at, trace.done_at)

    async def _close_all(self, conversations: list[Conversation], tally: Tally) -> None:
        """End every request (so each DONE is checked), then close every connection."""

        async def end(conversation: Conversation) -> None:
            trace = conversation.requests["w"]
            if trace.done_at is None:
                cut = conversation.interrupt(None)
                await bounded(asyncio.gather(cut.acked, trace.done), "final DONE", tally)
            tally.absorb(conversation)
            with contextlib.suppress(OSError):
                await conversation.close()

        await asyncio.gather(*(end(c) for c in conversations))

    def ratios(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return _latency_ratios(results, "trio-agent", ("ack_ms",), ("p50", "p99"))


# --------------------------------------------------------------------------- idle


class Idle(Scenario):
    """One idle session (nothing streaming): HEARTBEAT round trips, one at a time."""

    name = "idle"
    title = "Idle: HEARTBEAT round trip on a quiet session"
    servers = ("trio-agent", "asyncio", "fastapi", "fastapi-websockets")
    columns = (
        Column("heartbeats", "rtt_ms.count"),
        Column("RTT p50 ms", "rtt_ms.p50", 3),
        Column("RTT p90", "rtt_ms.p90", 3),
        Column("RTT p99", "rtt_ms.p99", 3),
        Column("RTT max", "rtt_ms.max", 3),
        *PROBLEM_COLUMNS,
    )

    def rounds(self, budget: Budget) -> int:
        return budget.latency_rounds

    async def run(self, server: RunningServer, budget: Budget) -> dict[str, Any]:
        """``heartbeats / rounds`` round trips, 5-15 ms apart so that the server is
        idle (waiting in its event loop) when each one arrives."""
        tally = Tally()
        rng = random.Random(budget.seed)
        rtts: list[float] = []
        conversation = await Conversation.open(HOST, server.port, PATH)
        try:
            for _ in range(-(-budget.heartbeats // budget.latency_rounds)):
                await asyncio.sleep(rng.uniform(0.005, 0.015))
                beat = conversation.heartbeat()
                if not await bounded(beat.answered, "HEARTBEAT reply", tally):
                    break
                rtts.append(_ms(beat.sent_at, beat.answered_at) or 0.0)
        finally:
            tally.absorb(conversation)
            await conversation.close()
        return {"rtts": rtts, **tally.figures()}

    def merge(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        rtts = [v for r in runs for v in r.get("rtts", [])]
        figures: dict[str, Any] = {"rounds": len(runs), "rtt_ms": summarize(rtts, digits=4)}
        for key in ("errors", "violations", "stale_frames"):
            figures[key] = sum(r.get(key, 0) for r in runs)
        figures["first_problems"] = [p for r in runs for p in r.get("first_problems", [])][:5]
        figures["load_average_after"] = [r.get("load_average_after") for r in runs]
        return figures

    def ratios(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return _latency_ratios(results, "trio-agent", ("rtt_ms",), ("p50", "p99"))


# --------------------------------------------------------------------------- upstream

#: The upstream benchmark, run by :class:`Upstream` as a process of its own.
BENCH_UPSTREAM = Path(__file__).resolve().parent.parent / "bench_upstream.py"


class Upstream(Scenario):
    """The ``openai`` agent against a fake upstream at 200 tokens/s: how soon after
    the server reads an INTERRUPT the upstream sees its connection closed, next to
    the ACK latency of the same agent and of ``lorem`` (no upstream).

    The figures need the moment the server *read* each INTERRUPT, which only an
    instrumented server can tell, so this workload runs ``scripts/bench_upstream.py``:
    the fake upstream, an instrumented trio-agent and the client, each in a process
    of its own. The shared trio-agent process stays idle meanwhile. See
    ``docs/agents.md`` for what the figures mean.
    """

    name = "upstream"
    title = (
        "Upstream: INTERRUPT to upstream disconnect (openai agent, fake upstream at 200 tokens/s)"
    )
    servers = ("trio-agent",)
    columns = (
        Column("rounds", "rounds"),
        Column("read->EOF p50 ms", "rows.interrupt_read_to_upstream_eof.p50_ms", 3),
        Column("read->EOF p99", "rows.interrupt_read_to_upstream_eof.p99_ms", 3),
        Column("read->EOF max", "rows.interrupt_read_to_upstream_eof.max_ms", 3),
        Column("target p99 <= 5 ms", "target_verdict"),
        Column("ACK openai p50", "rows.ack_latency_openai.p50_ms"),
        Column("ACK openai p99", "rows.ack_latency_openai.p99_ms"),
        Column("ACK lorem p50", "rows.ack_latency_lorem.p50_ms"),
        Column("ACK lorem p99", "rows.ack_latency_lorem.p99_ms"),
        Column("upstream cancelled", "upstream_cancelled_rounds"),
        *PROBLEM_COLUMNS,
    )

    async def run(self, server: RunningServer, budget: Budget) -> dict[str, Any]:
        argv = [sys.executable, str(BENCH_UPSTREAM), "--json"]
        argv += ["--rounds", str(budget.upstream_rounds), "--seed", str(budget.seed)]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            # Rounds take tens of milliseconds; a generous bound all the same.
            out, err = await asyncio.wait_for(
                process.communicate(), TIMEOUT_S + budget.upstream_rounds
            )
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        # It exits 1 when the target is missed: the figures still stand.
        if not out.strip():
            raise RuntimeError(f"bench_upstream.py printed no figures: {err.decode()[-500:]}")
        figures: dict[str, Any] = json.loads(out)
        figures["target_verdict"] = "met" if figures["target"]["met"] else "MISSED"
        figures["errors"] = 0
        figures["first_problems"] = figures.pop("first_violations")
        return figures

    def ratios(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        mine = results.get("trio-agent")
        return {"trio-agent": mine["ratios"]} if mine and "ratios" in mine else {}


#: Every workload, in the order a run goes through them.
SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (BargeIn(), Throughput(), SlowReader(), Scale(), Idle(), Upstream())
}
