#!/usr/bin/env python3
"""What trace mode costs: tracing off and on, against the same code without its hooks.

    .venv/bin/python scripts/bench_trace.py [--repeat 5] [--json bench-trace.json]

Three variants of the server run the same two workloads, each in a fresh
interpreter, interleaved, ``--repeat`` times:

* ``baseline``: this tree with every trace hook call in trio_agent/session.py
  replaced by ``pass`` (a copy in a temporary folder). What the server would
  cost if trace mode did not exist.
* ``off``: this tree, tracing off (the default).
* ``on``: this tree, tracing to a JSON-lines file (``--trace PATH``).

Workloads, over in-memory streams (no socket noise; the client runs in the
same process and its cost is included, as it would be in any end-to-end test):

* ``stream``: 4 requests of ``lorem`` at full speed, 1,000 frames each, read
  to the end. Reported as CPU time per frame and frames per second.
* ``interrupt``: 150 cycles of REQUEST, first STREAM, INTERRUPT, ACK, DONE.
  Reported as CPU time per cycle and the median INTERRUPT-sent to
  ACK-received time.

End to end, the hooks are small next to the noise of a shared machine, so the
script also times the hooks themselves, in this process: the two hook calls a
STREAM frame costs (``stream_queued`` and ``frame_written``), off and on, against
the same loop without them (best of 7 runs of 200,000 frames).

Prints tables with medians and ratios to the baseline, and writes the numbers
as JSON. Bounded: six short interpreters per repeat, about 15 s per repeat on
an idle core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("baseline", "off", "on")
#: A trace hook call on a line of its own, e.g. ``self.trace.frame_written(frame)``.
HOOK_LINE = re.compile(r"^([ \t]*)(self|self\._session)\.trace\.\w+\(.*\)[ \t]*$")


def make_baseline(into: Path) -> Path:
    """Copy trio_agent into ``into`` with every trace hook call replaced by ``pass``."""
    package = into / "trio_agent"
    shutil.copytree(ROOT / "trio_agent", package, ignore=shutil.ignore_patterns("__pycache__"))
    session = package / "session.py"
    lines = session.read_text().split("\n")
    stripped = [HOOK_LINE.sub(r"\1pass", line) for line in lines]
    removed = sum(a != b for a, b in zip(lines, stripped, strict=True))
    text = "\n".join(stripped)
    if removed < 10 or re.search(r"\.trace\.\w+\(", text):
        raise SystemExit(f"bench_trace: could not strip the trace hooks ({removed} lines found)")
    session.write_text(text)
    return into


# --------------------------------------------------------------------------- the worker


async def _stream_workload(server: Any, requests: int, words: int) -> dict[str, float]:
    from trio_agent.testing.wire import open_wire

    async with open_wire(server, "memory") as wire:
        ws = wire.ws
        started = time.perf_counter()
        cpu = time.process_time()
        for i in range(requests):
            await wire.request(f"r{i}", agent="lorem", options={"words": words, "words_per_s": 0})
        done = frames = 0
        while done < requests:
            raw = await ws.get_message()
            if '"STREAM"' in raw:
                frames += 1
            elif '"DONE"' in raw:
                done += 1
        cpu = time.process_time() - cpu
        elapsed = time.perf_counter() - started
    return {
        "frames": frames,
        "frames_per_s": frames / elapsed,
        "cpu_us_per_frame": cpu / frames * 1e6,
    }


async def _interrupt_workload(server: Any, cycles: int) -> dict[str, float]:
    from trio_agent.testing.wire import open_wire

    ack_us: list[float] = []
    async with open_wire(server, "memory") as wire:
        ws = wire.ws
        cpu = time.process_time()
        for i in range(cycles):
            await wire.request(f"r{i}", agent="lorem", options={"words": 1000, "words_per_s": 0})
            while '"STREAM"' not in await ws.get_message():
                pass
            sent = time.perf_counter()
            await wire.interrupt(f"r{i}")
            while '"INTERRUPT_ACK"' not in (raw := await ws.get_message()):
                pass
            ack_us.append((time.perf_counter() - sent) * 1e6)
            while '"DONE"' not in raw:
                raw = await ws.get_message()
        cpu = time.process_time() - cpu
    return {
        "cycles": cycles,
        "cpu_us_per_cycle": cpu / cycles * 1e6,
        "ack_us": statistics.median(ack_us),
    }


def worker(variant: str, workload: str, trace_path: str) -> dict[str, Any]:
    import trio
    from loguru import logger

    import trio_agent
    from trio_agent import AgentServer, ServerConfig
    from trio_agent.observability.trace import JsonLinesTracer

    logger.remove()  # as `--log-level WARNING` would: no per-request lines in the numbers
    where = Path(trio_agent.__file__).resolve().parent.parent
    assert (where == ROOT) == (variant != "baseline"), f"{variant} imported {where}"
    tracer = JsonLinesTracer(trace_path) if variant == "on" else None
    config = ServerConfig(port=0, max_concurrent_requests=8)
    server = AgentServer(config, trace=tracer)
    if workload == "stream":
        result = trio.run(_stream_workload, server, 4, 1_000)
    else:
        result = trio.run(_interrupt_workload, server, 150)
    if tracer is not None:
        tracer.close()
        result["trace_bytes"] = os.path.getsize(trace_path)
    return result


# --------------------------------------------------------------------------- the hooks alone


async def _hook_costs(frames: int, scratch: Path) -> dict[str, float]:
    """Nanoseconds per STREAM frame spent in its two hook calls, by variant."""
    import trio

    from trio_agent.observability.trace import (
        NO_TRACE,
        JsonLinesTracer,
        RecordingTracer,
        SessionTrace,
    )
    from trio_agent.protocol.constants import FrameKind
    from trio_agent.server.lanes import Outbound
    from trio_agent.server.registry import RequestRecord

    record = RequestRecord(request_id="r1", agent="lorem", scope=trio.CancelScope())
    frame = Outbound(FrameKind.STREAM, "{}", record)

    class Holder:  # the hooks are called as self.trace.<hook>(...), like in a session
        def __init__(self, trace: SessionTrace) -> None:
            self.trace = trace

    def without_hooks(holder: Holder) -> int:
        started = time.perf_counter_ns()
        for _seq in range(frames):
            pass
        return time.perf_counter_ns() - started

    def with_hooks(holder: Holder) -> int:
        started = time.perf_counter_ns()
        for seq in range(frames):
            holder.trace.stream_queued(record, seq)
            holder.trace.frame_written(frame)
        return time.perf_counter_ns() - started

    file_tracer = JsonLinesTracer(scratch / "hooks.jsonl")
    variants = {
        "baseline": (without_hooks, Holder(NO_TRACE.session("s"))),
        "off": (with_hooks, Holder(NO_TRACE.session("s"))),
        "on, sink discards": (with_hooks, Holder(RecordingTracer(lambda event: None).session("s"))),
        "on, JSON file": (with_hooks, Holder(file_tracer.session("s"))),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(7):
        for name, (loop, holder) in variants.items():
            best[name] = min(best[name], loop(holder) / frames)
        file_tracer.close()
        (scratch / "hooks.jsonl").unlink()
    return best


# --------------------------------------------------------------------------- the driver


def run_once(variant: str, workload: str, baseline: Path, scratch: Path) -> dict[str, Any]:
    env = dict(os.environ)
    if variant == "baseline":
        env["PYTHONPATH"] = str(baseline)
    trace_path = scratch / f"{variant}-{workload}.jsonl"
    trace_path.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, __file__, "--worker", variant, workload, str(trace_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if out.returncode != 0:
        raise SystemExit(f"bench_trace: {variant}/{workload} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant and workload")
    parser.add_argument("--json", type=Path, default=Path("bench-trace.json"))
    parser.add_argument(
        "--worker", nargs=3, metavar=("VARIANT", "WORKLOAD", "TRACE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be between 1 and 50")

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {v: [] for v in VARIANTS} for w in ("stream", "interrupt")
    }
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        scratch = Path(tmp)
        import trio

        hooks = trio.run(_hook_costs, 200_000, scratch)
        baseline = make_baseline(scratch / "baseline")
        for round_ in range(args.repeat):
            # Interleaved, and the order rotated each round, so drift in the
            # machine's load spreads over all variants.
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            for workload in runs:
                for variant in order:
                    runs[workload][variant].append(run_once(variant, workload, baseline, scratch))
            print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)

    def median(workload: str, variant: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[workload][variant]))

    rows = []
    for workload, key, better in (
        ("stream", "cpu_us_per_frame", "lower"),
        ("stream", "frames_per_s", "higher"),
        ("interrupt", "cpu_us_per_cycle", "lower"),
        ("interrupt", "ack_us", "lower"),
    ):
        base = median(workload, "baseline", key)
        for variant in VARIANTS:
            value = median(workload, variant, key)
            values = [r[key] for r in runs[workload][variant]]
            rows.append(
                {
                    "workload": workload,
                    "metric": key,
                    "better": better,
                    "variant": variant,
                    "median": value,
                    "min": min(values),
                    "max": max(values),
                    "ratio_to_baseline": value / base,
                }
            )
    trace_bytes = statistics.median(r["trace_bytes"] for r in runs["stream"]["on"])
    frames = statistics.median(r["frames"] for r in runs["stream"]["on"])

    print(
        f"\ntrace overhead, median of {args.repeat} interleaved runs (python {sys.version.split()[0]})"
    )
    print(
        f"{'workload':<10} {'metric':<17} {'variant':<9} {'median':>10} {'min..max':>20} {'vs baseline':>12}"
    )
    for row in rows:
        spread = f"{row['min']:,.1f}..{row['max']:,.1f}"
        print(
            f"{row['workload']:<10} {row['metric']:<17} {row['variant']:<9} "
            f"{row['median']:>10,.1f} {spread:>20} {row['ratio_to_baseline']:>11.3f}x"
        )
    print(f"\ntrace size with tracing on: {trace_bytes / frames:.0f} bytes per STREAM frame")
    print("\nthe hooks alone: ns per STREAM frame (two hook calls), best of 7 x 200,000")
    for name, ns in hooks.items():
        extra = "" if name == "baseline" else f"   +{ns - hooks['baseline']:,.0f} ns"
        print(f"  {name:<20} {ns:>8,.0f} ns{extra}")
    per_frame_ns = (
        statistics.median(r["cpu_us_per_frame"] for r in runs["stream"]["baseline"]) * 1e3
    )
    print(
        f"  tracing off adds {(hooks['off'] - hooks['baseline']) / per_frame_ns:.3%} to the "
        f"{per_frame_ns / 1e3:,.0f} µs of CPU a frame costs end to end (baseline median)"
    )
    print(
        "cpu_us_*: CPU time of the whole process (server and client) per frame or per\n"
        "interrupt cycle, lower is better, and the least sensitive to a shared machine;\n"
        "frames_per_s and ack_us (INTERRUPT sent -> ACK received) are wall-clock."
    )
    report = {
        "repeat": args.repeat,
        "python": sys.version.split()[0],
        "rows": rows,
        "trace_bytes_per_frame": trace_bytes / frames,
        "hook_ns_per_frame": hooks,
        "runs": runs,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
