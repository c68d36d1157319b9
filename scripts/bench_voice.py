#!/usr/bin/env python3
"""Spoken replies: how fast a barge-in silences them, and how many a core can pace.

Starts trio-agent as its own process on 127.0.0.1 (the built-in synthesiser unless
a row says espeak-ng), drives it from this process with the interrupt benchmark's
load generator client, and prints two tables, with the ratios against the
baselines measured in the same run. ``docs/voice.md`` explains every figure.

* **barge-in**: a spoken reply is interrupted at a random point. Measured at the
  client: from the INTERRUPT sent to the INTERRUPT_ACK, and to the last AUDIO
  byte received; the audio received after the INTERRUPT (in ms of sound); AUDIO
  chunks after the ACK (must be 0); chunks the server discarded (from /metrics).
  Rows: the design (real-time pace, priority lanes), and two baselines on the
  same server: the same audio sent as fast as backpressure allows
  (``audio_pace: 0``), and that again with ``--lanes fifo``.
* **capacity**: N sessions speak at once, in real time. A chunk is *late* when it
  arrives more than one chunk (20 ms) after its due time (the session's first
  chunk plus its ``start_ms``): a client with a 20 ms jitter buffer would run dry.
  The server's CPU is measured around the window; sessions per core =
  N / (server CPU seconds per second). Rows: the server as shipped (chunks sent
  with a lead of up to 20 ms, so a due chunk and the next leave in one write),
  and with ``--audio-lead-ms 0`` (each chunk on its own, at its time).
  espeak-ng's own CPU (its processes are the server's children) is reported on
  a row of its own.

    scripts/bench_voice.py --quick                 # about a minute
    scripts/bench_voice.py                         # a few minutes
    scripts/bench_voice.py --json bench-results/voice.json

Needs the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from interrupt_bench.runs import new_run, run_benchmark, serving
from interrupt_bench.servers import HOST, PATH, RunningServer, ServerSpec
from interrupt_bench.stats import ratio, summarize
from interrupt_bench.wsclient import WebSocketClient

#: Late: a chunk more than this far behind its due time (one chunk).
LATE_S = 0.020


def _server(key: str, label: str, *flags: str) -> ServerSpec:
    return ServerSpec(
        key,
        label,
        label,
        (sys.executable, "-m", "trio_agent", "serve", "--port", "{port}", "--log-level",
         "WARNING", "--max-sessions", "5000", "--idle-timeout-s", "0", "--slow-step-warn-s", "0",
         # Every session of the load generator comes from 127.0.0.1: the per-address
         # limit (100 by default) would refuse the capacity steps past it.
         "--max-sessions-per-address", "0", *flags),
    )  # fmt: skip


BUILTIN = _server("builtin", "trio-agent --speech builtin", "--speech", "builtin")
FIFO = _server("fifo", "trio-agent --speech builtin --lanes fifo", "--speech", "builtin",
               "--lanes", "fifo")  # fmt: skip
ESPEAK = _server("espeak", "trio-agent --speech espeak-ng", "--speech", "espeak-ng")
#: Each chunk at its own time: the capacity without the lead's shared writes.
STRICT = _server("strict", "trio-agent --speech builtin --audio-lead-ms 0", "--speech", "builtin",
                 "--audio-lead-ms", "0")  # fmt: skip


@dataclass(frozen=True)
class Budget:
    trials: int = 200
    concurrency: int = 4
    capacity_steps: tuple[int, ...] = (100, 200, 300, 400)
    capacity_window_s: float = 6.0
    espeak_sessions: int = 8


FULL = Budget()
QUICK = Budget(
    trials=40, concurrency=4, capacity_steps=(50, 200), capacity_window_s=3.0, espeak_sessions=4
)


# --------------------------------------------------------------------------- the client


class SpeechClient(WebSocketClient):
    """The load generator's client, reading binary AUDIO frames too.

    For speed it reads only what it measures from an AUDIO frame: the header's
    ``request_id``, ``start_ms`` and ``duration_ms``.
    """

    def __init__(self, port: int) -> None:
        super().__init__(HOST, port, PATH, self._text)
        self.frames: asyncio.Queue[tuple[str, dict[str, Any], float]] = asyncio.Queue()
        self.on_audio: Any = None
        self.on_frame: Any = None

    def _text(self, text: str, at: float) -> None:
        frame = json.loads(text)
        if self.on_frame is not None:
            self.on_frame(frame, at)
        else:
            self.frames.put_nowait((frame["msg_type"], frame, at))

    def _frame(self, b0: int, payload: bytes, at: float) -> None:
        if b0 & 0x0F == 0x2:
            (n,) = struct.unpack_from(">H", payload)
            header = json.loads(payload[2 : 2 + n])
            if self.on_audio is not None:
                self.on_audio(header, at)
            return
        super()._frame(b0, payload, at)

    def send(self, frame: dict[str, Any]) -> None:
        self.send_text(json.dumps(frame))


async def open_client(port: int) -> SpeechClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: SpeechClient(port), HOST, port)
    await client.opened
    kind, _, _ = await client.frames.get()
    assert kind == "SESSION", kind
    return client


async def next_frame(client: SpeechClient, kind: str) -> tuple[dict[str, Any], float]:
    while True:
        got, frame, at = await asyncio.wait_for(client.frames.get(), 30.0)
        if got == kind:
            return frame, at


def discarded_frames(server: RunningServer) -> float:
    """``trio_agent_stream_frames_discarded_total`` from the server's /metrics."""
    with urllib.request.urlopen(f"http://{HOST}:{server.port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    match = re.search(r"^trio_agent_stream_frames_discarded_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# --------------------------------------------------------------------------- barge-in


async def barge_in_trial(
    client: SpeechClient, rid: str, pace: float, rng: random.Random
) -> dict[str, Any]:
    """One spoken reply, interrupted after a random 0.3-1.5 s of audio."""
    cut_at_ms = rng.uniform(300, 1500)
    state: dict[str, Any] = {"received_ms": 0.0, "sent_at": None, "ack_at": None, "after": []}
    reached = asyncio.get_running_loop().create_future()

    def on_audio(header: dict[str, Any], at: float) -> None:
        if header["request_id"] != rid:
            return
        state["received_ms"] += header["duration_ms"]
        if state["sent_at"] is not None:
            state["after"].append((at, header["duration_ms"]))
        elif state["received_ms"] >= cut_at_ms and not reached.done():
            reached.set_result(None)

    client.on_audio = on_audio
    client.send(
        {"msg_type": "REQUEST", "msg_id": f"q-{rid}", "request_id": rid,
         "payload": {"input": "", "agent": "lorem",
                     "options": {"words": 400, "words_per_s": 0, "voice": True,
                                 "audio_pace": pace}}}
    )  # fmt: skip
    await asyncio.wait_for(reached, 60)
    # At a random point between two chunks, not right after one arrived.
    await asyncio.sleep(rng.uniform(0, 0.020))
    state["sent_at"] = time.perf_counter()
    client.send({"msg_type": "INTERRUPT", "msg_id": f"i-{rid}", "request_id": rid})
    _, ack_at = await next_frame(client, "INTERRUPT_ACK")
    done, _ = await next_frame(client, "DONE")
    client.on_audio = None
    sent_at = state["sent_at"]
    after = state["after"]
    return {
        "ack_s": ack_at - sent_at,
        "last_audio_s": (max(at for at, _ in after) - sent_at) if after else 0.0,
        "audio_after_ms": sum(ms for _, ms in after),
        "chunks_after_ack": sum(1 for at, _ in after if at > ack_at),
        "audio_ms_exact": done["payload"].get("audio_ms") == state["received_ms"],
        "interrupted": done["payload"]["status"] == "interrupted",
    }


async def barge_in(server: RunningServer, pace: float, budget: Budget, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    discarded_before = discarded_frames(server)
    clients = [await open_client(server.port) for _ in range(budget.concurrency)]
    trials: list[dict[str, Any]] = []

    async def run(client: SpeechClient, index: int) -> None:
        for t in range(index, budget.trials, budget.concurrency):
            trials.append(await barge_in_trial(client, f"r{t}", pace, rng))

    try:
        await asyncio.gather(*(run(c, i) for i, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    return {
        "trials": len(trials),
        "ack_ms": summarize([t["ack_s"] for t in trials], scale=1000),
        "last_audio_ms": summarize([t["last_audio_s"] for t in trials], scale=1000),
        "audio_after_interrupt_ms": summarize([t["audio_after_ms"] for t in trials], digits=1),
        "chunks_after_ack": sum(t["chunks_after_ack"] for t in trials),
        "frames_discarded": discarded_frames(server) - discarded_before,
        "audio_ms_exact": sum(t["audio_ms_exact"] for t in trials),
        "interrupted": sum(t["interrupted"] for t in trials),
    }


# --------------------------------------------------------------------------- capacity


@dataclass
class _Session:
    first_at: float | None = None
    lateness: list[float] = field(default_factory=list)


async def capacity(server: RunningServer, sessions: int, window_s: float) -> dict[str, Any]:
    """``sessions`` spoken replies at real-time pace; lateness of every chunk in the window."""
    clients = await asyncio.gather(*(open_client(server.port) for _ in range(sessions)))
    states = [_Session() for _ in clients]
    measuring = {"from": 0.0, "to": float("inf")}

    for client, state in zip(clients, states, strict=True):

        def on_audio(header: dict[str, Any], at: float, state: _Session = state) -> None:
            if state.first_at is None:
                state.first_at = at
            if measuring["from"] <= at <= measuring["to"]:
                state.lateness.append(at - state.first_at - header["start_ms"] / 1000)

        client.on_audio = on_audio
        client.on_frame = lambda frame, at: None
    words = int(window_s * 3.5) + 40  # more speech than the window holds
    for i, client in enumerate(clients):
        client.send(
            {"msg_type": "REQUEST", "msg_id": "q", "request_id": f"c{i}",
             "payload": {"input": "", "agent": "lorem",
                         "options": {"words": words, "words_per_s": 0, "voice": True}}}
        )  # fmt: skip
    await asyncio.sleep(1.0)  # every session has started speaking
    cpu0, children0 = server.cpu_seconds(), _children_cpu(server)
    t0 = time.perf_counter()
    measuring["from"] = t0
    await asyncio.sleep(window_s)
    measuring["to"] = t1 = time.perf_counter()
    cpu = (server.cpu_seconds() - cpu0) / (t1 - t0)
    children = (_children_cpu(server) - children0) / (t1 - t0)
    for i, client in enumerate(clients):
        client.send({"msg_type": "INTERRUPT", "msg_id": "i", "request_id": f"c{i}"})
    await asyncio.gather(*(c.close() for c in clients))
    lateness = [x for s in states for x in s.lateness]
    late = sum(1 for x in lateness if x > LATE_S)
    return {
        "sessions": sessions,
        "chunks": len(lateness),
        "late_chunks": late,
        "lateness_ms": summarize(lateness, scale=1000, digits=1),
        "server_cpu": round(cpu, 3),
        "synthesizer_cpu": round(children / sessions, 4),
        "sessions_per_core": round(sessions / cpu, 0) if cpu > 0 else None,
        "sessions_per_core_with_synthesizer": round(sessions / (cpu + children), 0)
        if cpu + children > 0
        else None,
    }


def espeak_cost(phrases: int) -> dict[str, Any]:
    """espeak-ng's own CPU per second of speech, run here the way the server runs it
    (one process per phrase, WAV on stdout), measured with this process's children
    rusage."""
    import resource

    text = "Hello there, this is one phrase of a spoken reply"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    audio_bytes = 0
    for _ in range(phrases):
        out = subprocess.run(
            ["espeak-ng", "--stdout", "-v", "en-us", text], capture_output=True, check=True
        ).stdout
        audio_bytes += len(out) - 44
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    audio_s = audio_bytes / 2 / 22050
    return {
        "label": "espeak-ng alone",
        "phrases": phrases,
        "audio_s": round(audio_s, 2),
        "synthesizer_cpu": round(cpu / audio_s, 4),
        "sessions_per_core": round(audio_s / cpu, 0) if cpu > 0 else None,
    }


def _children_cpu(server: RunningServer) -> float:
    """CPU seconds of the server's reaped children (espeak-ng processes)."""
    times = server.ps.cpu_times()
    return float(times.children_user + times.children_system)


# --------------------------------------------------------------------------- report


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def print_table(title: str, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> None:
    print(f"\n== {title}")
    cells = [[h for h, _ in columns]] + [
        [_cell(_dig(row, path)) for _, path in columns] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _dig(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


BARGE_IN_COLUMNS = [
    ("server / pace", "label"),
    ("trials", "trials"),
    ("ACK p50 ms", "ack_ms.p50"),
    ("ACK p99 ms", "ack_ms.p99"),
    ("last AUDIO p50 ms", "last_audio_ms.p50"),
    ("last AUDIO p99 ms", "last_audio_ms.p99"),
    ("audio after INT p50 ms", "audio_after_interrupt_ms.p50"),
    ("audio after INT p99 ms", "audio_after_interrupt_ms.p99"),
    ("chunks after ACK", "chunks_after_ack"),
    ("frames discarded", "frames_discarded"),
    ("audio_ms exact", "audio_ms_exact"),
]
CAPACITY_COLUMNS = [
    ("synthesizer", "label"),
    ("sessions", "sessions"),
    ("chunks", "chunks"),
    ("late chunks", "late_chunks"),
    ("lateness p99 ms", "lateness_ms.p99"),
    ("lateness max ms", "lateness_ms.max"),
    ("server CPU", "server_cpu"),
    ("synth CPU per session", "synthesizer_cpu"),
    ("sessions/core", "sessions_per_core"),
    ("sessions/core incl. synth", "sessions_per_core_with_synthesizer"),
]


def _most_on_time(rows: list[dict[str, Any]], label: str) -> int:
    """The largest step of ``label`` with no late chunk."""
    on_time = [r["sessions"] for r in rows if r["label"] == label and not r["late_chunks"]]
    return max(on_time, default=0)


async def run_all(args: argparse.Namespace, budget: Budget, log_dir: Path) -> dict[str, Any]:
    run = new_run("bench_voice.py", {k: getattr(budget, k) for k in budget.__dataclass_fields__})
    run["late_threshold_ms"] = LATE_S * 1000
    espeak = shutil.which("espeak-ng") is not None and not args.no_espeak
    specs = [BUILTIN, FIFO, STRICT] + ([ESPEAK] if espeak else [])
    servers = {spec.key: RunningServer(spec, log_dir) for spec in specs}
    async with serving(servers.values(), run):
        rows: list[dict[str, Any]] = []
        for key, pace, label in (
            ("builtin", 1.0, "trio-agent, real time (the design)"),
            ("builtin", 0.0, "trio-agent, audio_pace 0 (burst)"),
            ("fifo", 0.0, "--lanes fifo, audio_pace 0"),
        ):
            figures = await barge_in(servers[key], pace, budget, seed=len(rows))
            rows.append({"label": label, "server": key, "audio_pace": pace, **figures})
            print(f"   {label}: done", flush=True)
        design = rows[0]
        ratios = {
            f"design / {row['label']}": {
                "ack_p99": ratio(design["ack_ms"]["p99"], row["ack_ms"]["p99"], digits=2),
                "last_audio_p99": ratio(
                    design["last_audio_ms"]["p99"], row["last_audio_ms"]["p99"], digits=2
                ),
                "audio_after_interrupt_p99": ratio(
                    design["audio_after_interrupt_ms"]["p99"],
                    row["audio_after_interrupt_ms"]["p99"],
                    digits=2,
                ),
            }
            for row in rows[1:]
        }
        run["barge_in"] = {"results": rows, "ratios": ratios}
        print_table("barge-in: a spoken reply interrupted at random", BARGE_IN_COLUMNS, rows)
        for key, value in ratios.items():
            print(f"   {key}: {json.dumps(value)}")

        rows = []
        for key, label in (("builtin", "builtin"), ("strict", "builtin, lead 0")):
            for n in budget.capacity_steps:
                figures = await capacity(servers[key], n, budget.capacity_window_s)
                rows.append({"label": label, **figures})
                print(f"   {label} x {n}: done", flush=True)
        if espeak:
            figures = await capacity(
                servers["espeak"], budget.espeak_sessions, budget.capacity_window_s
            )
            rows.append({"label": "espeak-ng", **figures})
            rows.append(espeak_cost(20))
        run["capacity"] = {
            "results": rows,
            "most_sessions_without_a_late_chunk": _most_on_time(rows, "builtin"),
            "most_sessions_without_a_late_chunk_lead_0": _most_on_time(rows, "builtin, lead 0"),
        }
        print_table("capacity: sessions speaking at once, in real time", CAPACITY_COLUMNS, rows)
        print(
            "   most builtin sessions with no late chunk: "
            f"{run['capacity']['most_sessions_without_a_late_chunk']} "
            f"(lead 0: {run['capacity']['most_sessions_without_a_late_chunk_lead_0']})"
        )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_voice.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts: about a minute")
    parser.add_argument(
        "--json", type=Path, default=Path("bench-results/voice.json"), metavar="PATH"
    )
    parser.add_argument("--trials", type=int, help="barge-in trials")
    parser.add_argument("--sessions", type=int, action="append", help="capacity step (repeat)")
    parser.add_argument("--window-s", type=float, help="capacity measuring window")
    parser.add_argument("--no-espeak", action="store_true", help="skip the espeak-ng row")
    parser.add_argument("--log-dir", type=Path, help="keep the server logs here")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.trials:
        budget = Budget(**{**budget.__dict__, "trials": args.trials})
    if args.sessions:
        budget = Budget(**{**budget.__dict__, "capacity_steps": tuple(args.sessions)})
    if args.window_s:
        budget = Budget(**{**budget.__dict__, "capacity_window_s": args.window_s})
    run = run_benchmark(
        "bench-voice-", args.log_dir, lambda log_dir: run_all(args, budget, log_dir)
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(run, indent=2) + "\n")
    print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
