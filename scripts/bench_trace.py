#!/usr/bin/env python3
"""What trace mode costs: tracing off and on, against the same code without its hooks.

    .venv/bin/python scripts/bench_trace.py [--repeat 5] [--json bench-trace.json]
    .venv/bin/python scripts/bench_trace.py --smoke   # tiny counts, one round: it runs

Three variants of the server run the same two workloads, each in a fresh
interpreter, interleaved, ``--repeat`` times:

* ``baseline``: a copy of this tree (in a temporary folder) as it would be if
  trace mode did not exist: ``SessionEvents`` (trio_agent/observability/events.py)
  calls no trace hook, and the server's code (trio_agent/server/) no longer calls
  the events then left empty, among them the two a STREAM frame makes
  (``self._events.stream_queued(...)``, ``events.frame_written(frame)``). Each call
  removed becomes ``pass``; the log lines and the metrics stay.
* ``off``: this tree, tracing off (the default).
* ``on``: this tree, tracing to a JSON-lines file (``--trace PATH``).

Workloads, over in-memory streams (no socket noise; the client runs in the
same process and its cost is included, as it would be in any end-to-end test),
against a server without its frame rate limit (the interrupt workload sends far
more than 50 frames a second):

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
import ast
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("baseline", "off", "on")
#: Where a session's events are written to the log, the trace and the metrics.
EVENTS_MODULE = Path("observability") / "events.py"
#: The package whose modules tell those events, as calls on the session's events object.
TELLERS = Path("server")
#: How the server's code names the session's events object: ``events.frame_written(frame)``,
#: ``self._events.stream_queued(record, seq)``, ``self.events.frame_read(message)``.
EVENTS_OBJECT = {"events", "_events"}
#: The events a STREAM frame makes: the hooks the baseline must have removed.
PER_FRAME_EVENTS = {"stream_queued", "frame_written"}


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does: the benchmark's figures by default (a smoke
    test passes tiny ones to :func:`main`)."""

    #: ``stream``: requests run at once, and the words (STREAM frames) of each.
    stream_requests: int = 4
    stream_words: int = 1_000
    #: ``interrupt``: REQUEST, STREAM, INTERRUPT, ACK, DONE cycles.
    interrupt_cycles: int = 150
    #: The hooks alone: frames per timed loop, and loops (the best one counts).
    hook_frames: int = 200_000
    hook_runs: int = 7


#: ``--smoke``: every variant, workload and table, with counts too small to measure
#: anything; it shows the benchmark still runs (the test suite runs it so).
SMOKE = Sizes(
    stream_requests=2, stream_words=20, interrupt_cycles=3, hook_frames=1_000, hook_runs=1
)
#: The most a workload may take in a worker. Either runs well under a second on an
#: idle core; past this, a reply it waits for is not coming, and the worker says so
#: rather than wait for the server to close the idle connection (120 s).
WORKLOAD_DEADLINE_S = 60.0


def _statements_to_pass(source: str, statements: Sequence[ast.stmt]) -> str:
    """``source`` with each of ``statements`` (each on lines of its own) replaced by
    ``pass``, its other lines left blank, so every other line keeps its number."""
    lines = source.split("\n")
    for stmt in statements:
        first, last = stmt.lineno - 1, (stmt.end_lineno or stmt.lineno) - 1
        head, tail = lines[first], lines[last]
        if head[: stmt.col_offset].strip() or tail[stmt.end_col_offset or 0 :].strip():
            raise SystemExit(f"bench_trace: not a statement of its own: {head.strip()!r}")
        lines[first] = head[: stmt.col_offset] + "pass"
        for i in range(first + 1, last + 1):
            lines[i] = ""
    return "\n".join(lines)


def _calls(tree: ast.AST, receiver: Callable[[ast.expr], bool]) -> list[tuple[ast.Expr, str]]:
    """Every statement of ``tree`` that is a lone method call on a receiver
    ``receiver`` accepts, with the method's name."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and receiver(node.value.func.value)
        ):
            found.append((node, node.value.func.attr))
    return found


def _is_trace(node: ast.expr) -> bool:
    """``self._trace``: the session's trace, inside :class:`SessionEvents`."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "_trace"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _is_events(node: ast.expr) -> bool:
    """``events``, ``self.events`` or ``self._events``: a session's events object."""
    if isinstance(node, ast.Name):
        return node.id in EVENTS_OBJECT
    return isinstance(node, ast.Attribute) and node.attr in EVENTS_OBJECT


def _silent_events(tree: ast.Module) -> set[str]:
    """The methods of ``SessionEvents`` that do nothing at all (a docstring, ``pass``)."""
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SessionEvents"]
    silent = set()
    for method in cls.body:
        if isinstance(method, ast.FunctionDef):
            body = [
                stmt
                for stmt in method.body
                if not isinstance(stmt, ast.Pass)
                and not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
            ]
            if not body:
                silent.add(method.name)
    return silent


def make_baseline(into: Path) -> Path:
    """Copy trio_agent into ``into`` as it would be if trace mode did not exist.

    In the copy, :class:`~trio_agent.observability.events.SessionEvents` no longer
    calls the trace (each ``self._trace.<hook>(...)`` becomes ``pass``; the log lines
    and the metrics stay), and the server's code no longer calls the events that are
    then left with nothing to do (``self._events.stream_queued(...)``,
    ``events.frame_written(frame)``, ``self.events.frame_read(message)``, ...).
    """
    package = into / "trio_agent"
    shutil.copytree(ROOT / "trio_agent", package, ignore=shutil.ignore_patterns("__pycache__"))

    events_path = package / EVENTS_MODULE
    source = events_path.read_text()
    hooks = _calls(ast.parse(source), _is_trace)
    source = _statements_to_pass(source, [stmt for stmt, _name in hooks])
    tree = ast.parse(source)
    if len(hooks) < 10 or _calls(tree, _is_trace):
        raise SystemExit(f"bench_trace: could not strip the trace hooks ({len(hooks)} found)")
    events_path.write_text(source)
    silent = _silent_events(tree)

    removed: set[str] = set()
    for path in sorted((package / TELLERS).rglob("*.py")):
        source = path.read_text()
        calls = _calls(ast.parse(source), _is_events)
        gone = [(stmt, name) for stmt, name in calls if name in silent]
        if gone:
            removed.update(name for _stmt, name in gone)
            source = _statements_to_pass(source, [stmt for stmt, _name in gone])
            compile(source, str(path), "exec")
            path.write_text(source)
    if not removed >= PER_FRAME_EVENTS:
        missing = ", ".join(sorted(PER_FRAME_EVENTS - removed))
        raise SystemExit(f"bench_trace: found no call of {missing} to remove")
    # Compiled now, as this tree already is, so that no run of the baseline pays for it.
    compileall.compile_dir(package, quiet=1)
    return into


# --------------------------------------------------------------------------- the worker


async def _next_frame(ws: Any) -> str:
    """The next text frame from the server. An ERROR means a frame of ours was
    refused, and the reply it would have had will never come: stop at once rather
    than wait until the server closes the idle connection."""
    raw: str = await ws.get_message()
    if '"msg_type":"ERROR"' in raw:
        raise RuntimeError(f"the server refused a frame: {raw}")
    return raw


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
            raw = await _next_frame(ws)
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
            while '"STREAM"' not in await _next_frame(ws):
                pass
            sent = time.perf_counter()
            await wire.interrupt(f"r{i}")
            while '"INTERRUPT_ACK"' not in (raw := await _next_frame(ws)):
                pass
            ack_us.append((time.perf_counter() - sent) * 1e6)
            while '"DONE"' not in raw:
                raw = await _next_frame(ws)
        cpu = time.process_time() - cpu
    return {
        "cycles": cycles,
        "cpu_us_per_cycle": cpu / cycles * 1e6,
        "ack_us": statistics.median(ack_us),
    }


def worker(variant: str, workload: str, trace_path: str, sizes: Sizes) -> dict[str, Any]:
    import trio
    from loguru import logger

    import trio_agent
    from trio_agent import AgentServer, ServerConfig
    from trio_agent.observability.trace import JsonLinesTracer

    logger.remove()  # as `--log-level WARNING` would: no per-request lines in the numbers
    where = Path(trio_agent.__file__).resolve().parent.parent
    assert (where == ROOT) == (variant != "baseline"), f"{variant} imported {where}"
    tracer = JsonLinesTracer(trace_path) if variant == "on" else None
    # No frame rate limit: the interrupt workload sends two frames per cycle as fast
    # as the server answers, far above the default 50 frames/s, and a refused REQUEST
    # or INTERRUPT never gets its STREAM or ACK.
    config = ServerConfig(port=0, max_concurrent_requests=8, rate_limit_per_s=0)
    server = AgentServer(config, trace=tracer)

    async def bounded() -> dict[str, float]:
        try:
            with trio.fail_after(WORKLOAD_DEADLINE_S):
                if workload == "stream":
                    return await _stream_workload(server, sizes.stream_requests, sizes.stream_words)
                return await _interrupt_workload(server, sizes.interrupt_cycles)
        except trio.TooSlowError:
            raise SystemExit(
                f"bench_trace: {variant}/{workload} did not finish in {WORKLOAD_DEADLINE_S:.0f} s"
            ) from None

    result = trio.run(bounded)
    if tracer is not None:
        tracer.close()
        result["trace_bytes"] = os.path.getsize(trace_path)
    return result


# --------------------------------------------------------------------------- the hooks alone


async def _hook_costs(frames: int, runs: int, scratch: Path) -> dict[str, float]:
    """Nanoseconds per STREAM frame spent in its two hook calls, by variant."""
    import trio

    from trio_agent.observability.events import SessionEvents, session_events
    from trio_agent.observability.metrics import NO_METRICS
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

    class Holder:
        """Holds a session's events as the server's code does: the request's stream
        calls ``self._events.stream_queued(...)``, the writer ``events.frame_written(...)``."""

        def __init__(self, trace: SessionTrace) -> None:
            self._events: SessionEvents = session_events(trace, NO_METRICS)

    def without_hooks(holder: Holder) -> int:
        started = time.perf_counter_ns()
        for _seq in range(frames):
            pass
        return time.perf_counter_ns() - started

    def with_hooks(holder: Holder) -> int:
        events = holder._events
        started = time.perf_counter_ns()
        for seq in range(frames):
            holder._events.stream_queued(record, seq)
            events.frame_written(frame)
        return time.perf_counter_ns() - started

    file_tracer = JsonLinesTracer(scratch / "hooks.jsonl")
    variants = {
        "baseline": (without_hooks, Holder(NO_TRACE.session("s"))),
        "off": (with_hooks, Holder(NO_TRACE.session("s"))),
        "on, sink discards": (with_hooks, Holder(RecordingTracer(lambda event: None).session("s"))),
        "on, JSON file": (with_hooks, Holder(file_tracer.session("s"))),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(runs):
        for name, (loop, holder) in variants.items():
            best[name] = min(best[name], loop(holder) / frames)
        file_tracer.close()
        (scratch / "hooks.jsonl").unlink()
    return best


# --------------------------------------------------------------------------- the driver


def run_once(
    variant: str, workload: str, baseline: Path, scratch: Path, sizes: Sizes
) -> dict[str, Any]:
    env = dict(os.environ)
    if variant == "baseline":
        env["PYTHONPATH"] = str(baseline)
    trace_path = scratch / f"{variant}-{workload}.jsonl"
    trace_path.unlink(missing_ok=True)
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            variant,
            workload,
            str(trace_path),
            json.dumps(asdict(sizes)),
        ],
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


def main(argv: list[str] | None = None, sizes: Sizes = Sizes()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, help="runs per variant and workload (default 5; 1 with --smoke)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny counts and one round (unless --repeat says otherwise): shows it runs, "
        "measures nothing",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-trace.json"))
    parser.add_argument(
        "--worker",
        nargs=4,
        metavar=("VARIANT", "WORKLOAD", "TRACE", "SIZES"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.worker:
        variant, workload, trace_path, sizes_json = args.worker
        print(json.dumps(worker(variant, workload, trace_path, Sizes(**json.loads(sizes_json)))))
        return 0
    if args.smoke:
        sizes = SMOKE
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 5
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be between 1 and 50")

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {v: [] for v in VARIANTS} for w in ("stream", "interrupt")
    }
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        scratch = Path(tmp)
        import trio

        hooks = trio.run(_hook_costs, sizes.hook_frames, sizes.hook_runs, scratch)
        baseline = make_baseline(scratch / "baseline")
        for round_ in range(args.repeat):
            # Interleaved, and the order rotated each round, so drift in the
            # machine's load spreads over all variants.
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            for workload in runs:
                for variant in order:
                    runs[workload][variant].append(
                        run_once(variant, workload, baseline, scratch, sizes)
                    )
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
    print(
        "\nthe hooks alone: ns per STREAM frame (two hook calls), "
        f"best of {sizes.hook_runs} x {sizes.hook_frames:,}"
    )
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
