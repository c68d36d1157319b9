#!/usr/bin/env python3
"""Where a trio-agent server's CPU goes under one workload: Trio's, ours, the kernel's.

Runs one workload of ``scripts/bench_interrupt.py`` against a trio-agent server,
samples that server with py-spy (from outside, while the workload runs) and
sorts every sample by what it was executing at the time (the innermost Python
frame, the way py-spy attributes a system call to the line that made it):

- **Trio's scheduler**: ``trio``'s core (the run loop, rescheduling, parking
  lots, cancel scopes, timeouts) and ``outcome``;
- **epoll** and **socket writes / reads**: the lines that make those system
  calls, so mostly the kernel's time (on loopback a write also runs the
  receiving side of TCP);
- **trio-agent**: this package's own code;
- **WebSocket parsing** (wsproto, trio-websocket), **logging** (loguru),
  **pydantic**, **metrics** (prometheus_client), and the rest (the standard
  library, mostly ``contextlib``).

With the workload's frames per second and the server's CPU (both from the same
run), each share is also given as microseconds of CPU per frame.
``docs/performance.md`` ("What the remaining gap is made of") has runs.

    .venv/bin/python scripts/profile_split.py --scenario barge-in
    .venv/bin/python scripts/profile_split.py --scenario throughput    # one session
    .venv/bin/python scripts/profile_split.py --scenario scale --json split.json

Needs the ``bench`` extra (py-spy) and the right to trace a child process
(root, or ``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

SCRIPTS = Path(__file__).resolve().parent

#: (category, what a leaf frame's file path or function must match), first match wins.
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("socket writes (kernel)", re.compile(r"^GuardedStream\._send_now |^CorkableStream\._send")),
    ("epoll (kernel)", re.compile(r"^EpollIOManager\.get_events ")),
    ("socket reads (kernel)", re.compile(r"^_SocketType\._nonblocking_helper ")),
    (
        "Trio's scheduler",
        re.compile(r"[(/]trio/|[(/]outcome/|<attrs generated methods (trio|outcome)"),
    ),
    ("WebSocket parsing", re.compile(r"[(/](wsproto|trio_websocket)/")),
    ("logging", re.compile(r"[(/]loguru/")),
    ("pydantic", re.compile(r"[(/]pydantic(_core)?/|BaseModel\.")),
    ("metrics", re.compile(r"[(/]prometheus_client/")),
    ("trio-agent", re.compile(r"[(/]trio_agent/")),
)
OTHER = "other (standard library)"


def category(leaf: str) -> str:
    """The category of one sample, from its innermost frame as py-spy's raw format
    writes it: ``function (path/to/file.py:line)``."""
    for name, pattern in CATEGORIES:
        if pattern.search(leaf):
            return name
    return OTHER


def split(raw: str) -> tuple[Counter[str], int]:
    """Samples per category in py-spy's raw (collapsed) output, and their total."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        counts[category(stack.split(";")[-1])] += int(count)
    return counts, sum(counts.values())


def _server_pid(bench: subprocess.Popen[bytes], limit_s: float = 90.0) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for child in psutil.Process(bench.pid).children(recursive=True):
            if "trio_agent" in child.cmdline() and "serve" in child.cmdline():
                return int(child.pid)
        if bench.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit("the trio-agent server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=("barge-in", "throughput", "scale"), required=True)
    parser.add_argument("--sessions", type=int, default=20, help="of barge-in")
    parser.add_argument(
        "--warm-up-s",
        type=float,
        help="before sampling starts (default: 6; scale: 14, past its ramp of 1,000 sessions)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="of sampling")
    parser.add_argument("--rate", type=int, default=400, help="samples per second")
    parser.add_argument("--json", type=Path, help="write the split and the run's figures here")
    parser.add_argument("--raw", type=Path, help="keep py-spy's samples here (its raw format)")
    args = parser.parse_args(argv)
    if args.warm_up_s is None:
        args.warm_up_s = 14.0 if args.scenario == "scale" else 6.0
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed (pip install -e '.[bench]')")
    # The workload must outlast warm-up plus sampling; what it measures is read from
    # its own JSON, so the figures per frame are of the same run.
    length = args.warm_up_s + args.seconds + 4
    workload = {
        "barge-in": ["--sessions", str(args.sessions), "--trials", "1000", "--latency-rounds", "1"],
        # The one-session part (sampled) lasts past the sampling; S sessions follow.
        "throughput": [
            "--sessions",
            "2",
            "--throughput-frames",
            str(int(length * 40_000)),
            "--throughput-rounds",
            "1",
        ],
        "scale": ["--scale-rounds", "1", "--scale-window-s", str(length)],
    }[args.scenario]
    with tempfile.TemporaryDirectory(prefix="profile-split-") as folder:
        figures_path, raw_path = Path(folder) / "run.json", Path(folder) / "samples.raw"
        log_path = Path(folder) / "bench.log"
        log = log_path.open("wb")
        bench = subprocess.Popen(
            [
                sys.executable,
                str(SCRIPTS / "bench_interrupt.py"),
                "--scenario",
                args.scenario,
                "--server",
                "trio-agent",
                *workload,
                "--json",
                str(figures_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            pid = _server_pid(bench)
            time.sleep(args.warm_up_s)
            subprocess.run(
                [
                    *(spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds))),
                    *("--rate", str(args.rate), "--format", "raw", "--output", str(raw_path)),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Barge-in runs its trials to the end; the split is taken already.
            stopped = args.scenario == "barge-in"
            if stopped:
                bench.terminate()
            if bench.wait() and not stopped:
                sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
                raise SystemExit(f"the workload failed ({bench.returncode})")
        finally:
            if bench.poll() is None:
                bench.kill()
            log.close()
        counts, total = split(raw_path.read_text())
        if not total:
            raise SystemExit("py-spy took no sample")
        if args.raw:
            shutil.copyfile(raw_path, args.raw)
        run = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    per_frame_us = _cpu_per_frame_us(run, args.scenario)
    rows: list[dict[str, Any]] = []
    print(f"{args.scenario}: {total} samples; server CPU per frame: {per_frame_us or '-'} us")
    print(f"{'category':28}  share  us/frame")
    for name, n in counts.most_common():
        share = n / total
        us = round(per_frame_us * share, 1) if per_frame_us is not None else None
        rows.append({"category": name, "samples": n, "share": round(share, 4), "us_per_frame": us})
        print(f"{name:28}  {100 * share:4.1f}%  {'-' if us is None else f'{us:8.1f}'}")
    if args.json:
        args.json.write_text(
            json.dumps({"scenario": args.scenario, "cpu_us_per_frame": per_frame_us, "split": rows})
            + "\n"
        )
    return 0


def _cpu_per_frame_us(run: dict[str, Any], scenario: str) -> float | None:
    """The server's CPU per STREAM frame in the run, where the workload measures both."""
    results = run.get("scenarios", {}).get(scenario, {}).get("results", {}).get("trio-agent", {})
    if scenario == "scale" and results.get("frames_per_s"):
        return round(
            10_000 * float(results["server_cpu_percent"]) / float(results["frames_per_s"]), 1
        )
    if scenario == "throughput":
        cpu_s_per_100k = (results.get("one") or {}).get("server_cpu_s_per_100k_frames")
        return round(float(cpu_s_per_100k) * 10, 1) if cpu_s_per_100k else None
    return None


if __name__ == "__main__":
    sys.exit(main())
