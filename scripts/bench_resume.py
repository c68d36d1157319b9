#!/usr/bin/env python3
"""Resuming sessions (protocol v1.2): how fast a reply continues, whether a frame is lost.

Starts trio-agent twice as its own processes on 127.0.0.1, as shipped (resumption
on: ``--resume-window-s 30``, ``--resume-buffer-kib 256``) and with resumption off
(``--resume-window-s 0``), drives them from this process with the interrupt
benchmark's load generator client, and prints two tables. ``docs/performance.md``
("Resume") explains every figure.

* **drops**: S sessions stream ``lorem`` replies (R replies each, C at a time, at a
  steady pace). While they stream, each session's connection is dropped at random
  points: the client stops reading for a random 20-100 ms (the frames the server
  writes meanwhile are in flight, as on a network that stalls), resets the TCP
  connection (no close frame), waits up to 20 ms, connects anew and resumes.
  Measured per resume: from the new TCP connect, and from sending RESUME, to the
  first frame after RESUMED (the first replayed one: the client drops with frames
  in flight, so there always is one; the server's log counts them). Per reply,
  over all its connections: frames lost (a ``seq`` below DONE's ``frames`` never
  received), duplicated (a ``seq`` received twice), out of order, and DONEs
  (exactly one). Targets: 0 lost, 0 duplicated.
* **overhead**: the replay buffer's cost: S sessions streaming as fast as the
  server sends, on the server as shipped (A) and with resumption off (B),
  interleaved A B A B in the same run, before the drops (both servers fresh). The
  ratio of frames/s (and of server CPU per frame) is taken per pair and its
  median reported. Target: at most 5%.

    scripts/bench_resume.py                   # about a minute
    scripts/bench_resume.py --quick           # a few seconds
    scripts/bench_resume.py --json bench-results/resume.json

Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from interrupt_bench.conversation import Conversation
from interrupt_bench.report import markdown_rows, text_table
from interrupt_bench.resuming import ResumeTrace, ResumingSession
from interrupt_bench.runs import new_run, run_benchmark, serving
from interrupt_bench.scenarios import TIMEOUT_S, Column, Tally, bounded
from interrupt_bench.servers import HOST, PATH, RunningServer, ServerSpec
from interrupt_bench.stats import ratio, summarize

#: The targets of the issue: no frame lost or duplicated; the buffer costs <= 5%.
TARGET_OVERHEAD_PERCENT = 5.0


def _server(key: str, label: str, *flags: str) -> ServerSpec:
    return ServerSpec(
        key,
        label,
        label,
        (sys.executable, "-m", "trio_agent", "serve", "--port", "{port}", *flags),
    )


#: A: as shipped, resumption on (window 30 s, replay buffer 256 KiB per session).
RESUME = _server("resume", "trio-agent (resume on, as shipped)")
#: B: the same server with resumption off: no replay buffer, no token.
OFF = _server("off", "trio-agent --resume-window-s 0", "--resume-window-s", "0")


@dataclass(frozen=True)
class Budget:
    """Every count and duration a run uses. ``--quick`` and the flags pick these."""

    sessions: int = 20
    #: Replies each session asks for, one batch of ``concurrency`` after the other.
    replies: int = 5
    concurrency: int = 2
    words: int = 120
    words_per_s: float = 100.0
    #: Drops during each batch of replies, at random points of it.
    drops_per_reply: int = 2
    stall_ms_min: float = 20.0
    stall_ms_max: float = 100.0
    reconnect_ms_max: float = 20.0
    throughput_sessions: int = 20
    throughput_frames: int = 20_000
    #: A B pairs in the overhead workload.
    throughput_rounds: int = 10
    seed: int = 1


FULL = Budget()
QUICK = Budget(sessions=6, replies=2, throughput_frames=5_000, throughput_rounds=2)


# --------------------------------------------------------------------------- drops


async def drive_session(
    server: RunningServer, budget: Budget, index: int, tally: Tally
) -> ResumingSession | None:
    """One session: ``replies`` batches of ``concurrency`` replies, each batch
    dropped and resumed ``drops_per_reply`` times at random points."""
    rng = random.Random(budget.seed * 7919 + index)
    try:
        session = await asyncio.wait_for(ResumingSession.open(HOST, server.port, PATH), TIMEOUT_S)
    except (OSError, TimeoutError, RuntimeError) as exc:
        tally.errors.append(f"session {index}: open: {exc!r}")
        return None
    try:
        for batch in range(budget.replies):
            replies = [
                session.request(f"r{batch}-{c}", words=budget.words, words_per_s=budget.words_per_s)
                for c in range(budget.concurrency)
            ]
            # Points within the first 80% of the reply, so each drop finds it running.
            points = sorted(
                rng.sample(range(1, max(2, budget.words * 4 // 5)), budget.drops_per_reply)
            )
            for point in points:
                if not await bounded(session.reached(replies, point), "a drop point", tally):
                    return session
                last_seq = await session.drop(
                    rng.uniform(budget.stall_ms_min, budget.stall_ms_max) / 1000
                )
                await asyncio.sleep(rng.uniform(0, budget.reconnect_ms_max) / 1000)
                try:
                    resumed = await asyncio.wait_for(session.resume(last_seq), TIMEOUT_S)
                except (OSError, TimeoutError, RuntimeError) as exc:
                    tally.errors.append(f"session {index}: resume: {exc!r}")
                    return session
                # Never drop again before the replay has begun: each resume is timed.
                if not await bounded(resumed.first_frame, "the first frame after RESUMED", tally):
                    return session
            await bounded(asyncio.gather(*(r.done for r in replies)), "DONEs", tally)
        return session
    finally:
        with contextlib.suppress(OSError):
            await session.close()


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else (end - start) * 1e3


def replayed_in_log(server: RunningServer, since: int) -> list[int]:
    """``replayed`` of every "session resumed" line the server logged past byte
    ``since`` of its log: the frames each resume sent again."""
    with server.log_path.open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    return [
        int(m.group(1))
        for line in text.splitlines()
        if "session resumed" in line and (m := re.search(r"replayed\W+(\d+)", line))
    ]


async def drops(server: RunningServer, budget: Budget) -> dict[str, Any]:
    """S sessions streaming, every connection dropped and resumed at random."""
    tally = Tally()
    log_start = server.log_path.stat().st_size
    started = time.perf_counter()
    results = await asyncio.gather(
        *(drive_session(server, budget, i, tally) for i in range(budget.sessions))
    )
    wall = time.perf_counter() - started
    sessions = [s for s in results if s is not None]
    resumes: list[ResumeTrace] = [r for s in sessions for r in s.resumes]
    per_reply = [r.figures() for s in sessions for r in s.replies.values()]
    for s in sessions:
        tally.violations.extend(str(v) for v in s.finish())
        tally.errors.extend(s.errors)

    def total(key: str) -> int:
        return sum(f[key] for f in per_reply)

    # The server writes its log line as it resumes: give the file a moment.
    await asyncio.sleep(0.2)
    replayed = replayed_in_log(server, log_start)
    connect_ms = [_ms(r.connect_at, r.first_frame_at) for r in resumes]
    resume_ms = [_ms(r.resume_sent_at, r.first_frame_at) for r in resumes]
    figures: dict[str, Any] = {
        "sessions": len(sessions),
        "wall_s": round(wall, 2),
        "drops": len(resumes),
        "resumed": sum(1 for r in resumes if r.resumed_at is not None),
        "connect_to_first_frame_ms": summarize([v for v in connect_ms if v is not None]),
        "resume_to_first_frame_ms": summarize([v for v in resume_ms if v is not None]),
        "resume_to_resumed_ms": summarize(
            [v for r in resumes if (v := _ms(r.resume_sent_at, r.resumed_at)) is not None]
        ),
        "connect_to_session_ms": summarize(
            [v for r in resumes if (v := _ms(r.connect_at, r.session_at)) is not None]
        ),
        "replies": len(per_reply),
        "replies_completed": total("completed"),
        "replies_words_exact": total("words_exact"),
        "frames_received": total("frames"),
        "frames_lost": total("lost"),
        "frames_duplicated": total("duplicated"),
        "frames_out_of_order": total("out_of_order"),
        "resume_gaps": total("resume_gaps"),
        "missing_dones": total("missing_dones"),
        "extra_dones": total("extra_dones"),
        "frames_after_drop": sum(s.frames_after_drop for s in sessions),
        "server_resumes_logged": len(replayed),
        "server_frames_replayed": sum(replayed),
        "server_resumes_with_replay": sum(1 for n in replayed if n > 0),
    }
    figures["target_lost_duplicated"] = (
        "met"
        if figures["frames_lost"] == figures["frames_duplicated"] == 0
        and figures["missing_dones"] == figures["extra_dones"] == 0
        else "MISSED"
    )
    figures.update(tally.figures())
    figures["samples"] = {
        "connect_to_first_frame_ms": sorted(round(v, 4) for v in connect_ms if v is not None),
        "resume_to_first_frame_ms": sorted(round(v, 4) for v in resume_ms if v is not None),
    }
    return figures


# --------------------------------------------------------------------------- overhead


async def stream_round(server: RunningServer, sessions: int, frames: int) -> dict[str, Any]:
    """S sessions each streaming ``frames / S`` words as fast as the server sends:
    frames/s and the server's CPU seconds per 100k frames (no drops)."""
    tally = Tally()
    conversations = await asyncio.gather(
        *(Conversation.open(HOST, server.port, PATH, check=False) for _ in range(sessions))
    )
    try:
        warmups = [c.request("warmup", words=200, words_per_s=0) for c in conversations]
        await bounded(asyncio.gather(*(t.done for t in warmups)), "warm-up", tally)
        server_cpu = server.cpu_seconds()
        started = time.perf_counter()
        traces = [
            c.request("measured", words=frames // sessions, words_per_s=0) for c in conversations
        ]
        # Bounded, but never by less than 500 frames/s.
        await bounded(
            asyncio.gather(*(t.done for t in traces)), "DONEs", tally, TIMEOUT_S + frames / 500
        )
        ended = max((t.done_at or started) for t in traces)
        server_cpu = server.cpu_seconds() - server_cpu
    finally:
        await asyncio.gather(*(c.close() for c in conversations))
    seconds = ended - started
    received = sum(t.frames for t in traces)
    return {
        "frames": received,
        "seconds": round(seconds, 3),
        "frames_per_s": round(received / seconds, 1) if seconds > 0 else None,
        "server_cpu_s_per_100k_frames": round(server_cpu / received * 1e5, 3) if received else None,
        "errors": len(tally.errors),
    }


async def overhead(on: RunningServer, off: RunningServer, budget: Budget) -> dict[str, Any]:
    """The same streaming workload on A (resume on) and B (off), A B A B..."""
    rounds: dict[str, list[dict[str, Any]]] = {"resume": [], "off": []}
    for _ in range(budget.throughput_rounds):
        for key, server in (("resume", on), ("off", off)):
            rounds[key].append(
                await stream_round(server, budget.throughput_sessions, budget.throughput_frames)
            )
    pairs = list(zip(rounds["resume"], rounds["off"], strict=True))
    rate_ratios = [r for a, b in pairs if (r := ratio(a["frames_per_s"], b["frames_per_s"], 4))]
    cpu_ratios = [
        r
        for a, b in pairs
        if (r := ratio(a["server_cpu_s_per_100k_frames"], b["server_cpu_s_per_100k_frames"], 4))
    ]
    rate = statistics.median(rate_ratios) if rate_ratios else None
    cpu = statistics.median(cpu_ratios) if cpu_ratios else None
    figures: dict[str, Any] = {
        key: {
            "frames_per_s": summarize(
                [r["frames_per_s"] for r in runs if r["frames_per_s"]], digits=1
            ),
            "server_cpu_s_per_100k_frames": summarize(
                [
                    r["server_cpu_s_per_100k_frames"]
                    for r in runs
                    if r["server_cpu_s_per_100k_frames"]
                ]
            ),
            "errors": sum(r["errors"] for r in runs),
            "rounds": runs,
        }
        for key, runs in rounds.items()
    }
    figures["pairs"] = len(pairs)
    figures["frames_per_s_ratio_median"] = rate
    figures["server_cpu_ratio_median"] = cpu
    # Overhead: frames/s lost to the buffer, and server CPU per frame added by it.
    figures["throughput_overhead_percent"] = round((1 - rate) * 100, 1) if rate else None
    figures["cpu_overhead_percent"] = round((cpu - 1) * 100, 1) if cpu else None
    figures["target_overhead"] = (
        "met"
        if figures["throughput_overhead_percent"] is not None
        and figures["throughput_overhead_percent"] <= TARGET_OVERHEAD_PERCENT
        else "MISSED"
    )
    return figures


# --------------------------------------------------------------------------- report

DROP_COLUMNS = (
    Column("sessions", "sessions"),
    Column("drops", "drops"),
    Column("resumed", "resumed"),
    Column("connect->1st p50 ms", "connect_to_first_frame_ms.p50"),
    Column("p99", "connect_to_first_frame_ms.p99"),
    Column("RESUME->1st p50", "resume_to_first_frame_ms.p50"),
    Column("p99", "resume_to_first_frame_ms.p99"),
    Column("replayed", "server_frames_replayed"),
    Column("frames", "frames_received"),
    Column("lost", "frames_lost"),
    Column("duplicated", "frames_duplicated"),
    Column("DONEs missing/extra", "dones"),
    Column("errors", "errors"),
    Column("violations", "violations"),
)

OVERHEAD_COLUMNS = (
    Column("pairs", "pairs"),
    Column("resume on frames/s p50", "resume.frames_per_s.p50", 0),
    Column("off frames/s p50", "off.frames_per_s.p50", 0),
    Column("ratio (pairs p50)", "frames_per_s_ratio_median", 3),
    Column("overhead %", "throughput_overhead_percent", 1),
    Column("CPU s/100k on", "resume.server_cpu_s_per_100k_frames.p50", 3),
    Column("off", "off.server_cpu_s_per_100k_frames.p50", 3),
    Column("CPU overhead %", "cpu_overhead_percent", 1),
    Column("target <= 5%", "target_overhead"),
)


def rows(columns: tuple[Column, ...], figures: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    return [c.header for c in columns], [[c.cell(figures) for c in columns]]


def markdown(run: dict[str, Any]) -> str:
    return "\n\n".join(
        f"**{title}**\n\n{markdown_rows(*rows(columns, run[key]))}"
        for key, title, columns in TABLES
    )


TABLES = (
    ("overhead", "Overhead: the replay buffer on throughput (A B A B)", OVERHEAD_COLUMNS),
    ("drops", "Drops: sessions streaming, connections reset and resumed", DROP_COLUMNS),
)


async def run_all(budget: Budget, log_dir: Path) -> dict[str, Any]:
    run = new_run("bench_resume.py", dataclasses.asdict(budget))
    run["servers"] = {s.key: {"label": s.label, "argv": list(s.argv)} for s in (RESUME, OFF)}
    on, off = RunningServer(RESUME, log_dir), RunningServer(OFF, log_dir)
    me = psutil.Process()
    async with serving((on, off), run):
        # The overhead first, while both servers have served nothing yet.
        run["overhead"] = figures = await overhead(on, off, budget)
        print(f"\n== {TABLES[0][1]}")
        print(text_table(*rows(OVERHEAD_COLUMNS, figures)))
        sys.stdout.flush()
        client_cpu = sum(me.cpu_times()[:2])
        run["drops"] = figures = await drops(on, budget)
        figures["dones"] = f"{figures['missing_dones']}/{figures['extra_dones']}"
        figures["client_cpu_s"] = round(sum(me.cpu_times()[:2]) - client_cpu, 2)
        print(f"\n== {TABLES[1][1]}")
        print(text_table(*rows(DROP_COLUMNS, figures)))
        print(f"   target 0 lost, 0 duplicated: {figures['target_lost_duplicated']}")
        for problem in figures["first_problems"]:
            print(f"   {problem}")
        sys.stdout.flush()
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_resume.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts: a few seconds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure here")
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH", help="write the tables as Markdown here"
    )
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    counts = parser.add_argument_group("counts (override the --quick or full presets)")
    for f in dataclasses.fields(Budget):
        counts.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            default=None,
            metavar=f.name.split("_")[-1].upper(),
            help=f"(full: {getattr(FULL, f.name)}, quick: {getattr(QUICK, f.name)})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Budget)
        if getattr(args, f.name) is not None
    }
    budget = dataclasses.replace(QUICK if args.quick else FULL, **overrides)
    run = run_benchmark("bench-resume-", args.log_dir, lambda log_dir: run_all(budget, log_dir))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run, indent=2) + "\n")
        print(f"figures: {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(run) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
