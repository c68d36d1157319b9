#!/usr/bin/env python3
"""Cluster mode (``--redis-url``): what mirroring, relaying and failover cost and keep.

Five figures, each measured on real processes on loopback (redis-server, trio-agent
nodes, HAProxy), each against its target from the cluster issue, printed as one
table (figure, measured, target, met?) and written as JSON. ``docs/cluster.md``
("Figures") explains them and holds the last full run.

1. throughput with mirroring vs without, one node, 1 and 20 sessions (A B A B);
2. INTERRUPT -> ACK, cross-node (request on A, connection on B) vs local;
3. resume time, RESUME sent -> first replayed frame, owner alive and owner killed
   (and -> the DONE NODE_LOST);
4. frames lost / duplicated across random drops and node kills through HAProxy;
5. sessions at an ACK p99 threshold, ``--workers 2`` vs one process.

    scripts/bench_cluster.py                  # several minutes
    scripts/bench_cluster.py --quick          # a smoke run, a few seconds per figure
    scripts/bench_cluster.py --json bench-results/cluster.json --only 1 2

Needs redis-server (or valkey-server) and haproxy on PATH, and the ``bench`` and
``cluster`` extras. A figure that could not be measured is reported as such, with
the reason, never as a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_bench import cross_node, drops, scale, throughput
from cluster_bench.common import FULL, QUICK, Budget, ServerTree, cluster_flags, node_spec, row
from interrupt_bench.report import text_table
from interrupt_bench.runs import new_run, run_benchmark, serving

from trio_agent.testing.cluster import LocalCluster, cluster_unavailable
from trio_agent.testing.processes import redis_server

HEADERS = ["figure", "measured", "target", "met?"]
#: Every figure, in the order a run goes through them.
FIGURES = ("1", "2", "3", "4", "5")
BIG = ("--max-sessions", "20000", "--max-sessions-per-address", "0")


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def figure_throughput(
    redis_url: str, budget: Budget, log_dir: Path, run: dict[str, Any]
) -> list[list[str]]:
    mirrored = ServerTree(
        node_spec("mirrored", "serve --redis-url", *cluster_flags(redis_url, "tp", budget.lease_s)),
        log_dir,
    )
    plain = ServerTree(node_spec("plain", "serve"), log_dir)
    async with serving((mirrored, plain), run):
        run["throughput"] = figures = await throughput.measure(mirrored, plain, budget)
    return throughput.rows(figures)


async def figure_cross_node(
    redis_url: str, budget: Budget, log_dir: Path, run: dict[str, Any]
) -> list[list[str]]:
    def node(name: str) -> ServerTree:
        return ServerTree(
            node_spec(name, name, *cluster_flags(redis_url, name, budget.lease_s)), log_dir
        )

    a, b = node("node-a"), node("node-b")
    victims = [node(f"victim-{i}") for i in range(budget.owner_dead_trials)]
    async with serving((a, b, *victims), run):
        run["cross_node"] = figures = await cross_node.measure(a, b, victims, budget)
    return cross_node.rows(figures)


async def figure_drops(
    redis_url: str, budget: Budget, log_dir: Path, run: dict[str, Any]
) -> list[list[str]]:
    import asyncio

    cluster = LocalCluster(nodes=3, extra_args=["--node-lease-s", f"{budget.lease_s:g}"])
    await asyncio.to_thread(cluster.start)
    try:
        run["drops"] = figures = await drops.measure(cluster, budget, log_dir)
    finally:
        await asyncio.to_thread(cluster.stop)
    return drops.rows(figures)


async def figure_scale(
    redis_url: str, budget: Budget, log_dir: Path, run: dict[str, Any]
) -> list[list[str]]:
    single = ServerTree(
        node_spec(
            "one-process", "one process", *cluster_flags(redis_url, "one", budget.lease_s), *BIG
        ),
        log_dir,
    )
    workers = ServerTree(
        node_spec(
            "workers-2",
            "--workers 2",
            *cluster_flags(redis_url, "two", budget.lease_s),
            *BIG,
            "--workers",
            "2",
        ),
        log_dir,
    )
    async with serving((single, workers), run):
        run["scale"] = figures = await scale.measure(single, workers, budget)
    return scale.rows(figures)


Figure = Callable[[str, Budget, Path, dict[str, Any]], Awaitable[list[list[str]]]]
#: Figure 3 is measured with figure 2 (the owner-alive resumes are its cross trials).
RUNNERS: dict[str, tuple[str, Figure]] = {
    "1": ("1. throughput mirrored/plain", figure_throughput),
    "2": ("2./3. cross-node INTERRUPT and resume", figure_cross_node),
    "4": ("4. frames lost / duplicated", figure_drops),
    "5": ("5. sessions, --workers 2 / 1 process", figure_scale),
}


async def run_all(budget: Budget, log_dir: Path, only: set[str]) -> dict[str, Any]:
    run = new_run("bench_cluster.py", dataclasses.asdict(budget))
    run["commit"] = commit()
    run["machine"]["nproc"] = len(os.sched_getaffinity(0))
    rows: list[list[str]] = []
    run["not_measured"] = {}
    started = time.perf_counter()
    with redis_server() as redis:
        for key, (title, runner) in RUNNERS.items():
            if key not in only and not (key == "2" and "3" in only):
                continue
            print(f"\n== {title}", flush=True)
            try:
                new_rows = await runner(redis.url, budget, log_dir, run)
            except Exception as exc:  # a figure that fails is reported, not invented
                traceback.print_exc()
                run["not_measured"][key] = repr(exc)
                new_rows = [row(title, f"not measured: {exc!r}"[:200], "-", None)]
            print(text_table(HEADERS, new_rows), flush=True)
            rows.extend(new_rows)
    run["table"] = rows
    run["wall_s"] = round(time.perf_counter() - started, 1)
    run["machine"]["load_average_at_end"] = os.getloadavg()
    print("\n== Cluster figures")
    print(text_table(HEADERS, rows))
    print(
        f"load average: start {run['machine']['load_average_at_start']}, end {run['machine']['load_average_at_end']}"
    )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_cluster.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: a few seconds per figure"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure here")
    parser.add_argument("--log-dir", type=Path, help="keep the servers' logs here")
    parser.add_argument(
        "--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="these figures only"
    )
    parser.add_argument(
        "--lease-s",
        type=float,
        help="--node-lease-s of every node (default 1: kills are seen fast)",
    )
    args = parser.parse_args(argv)
    why = cluster_unavailable()
    if why is not None:
        print(f"bench_cluster.py: {why}", file=sys.stderr)
        return 2
    budget = QUICK if args.quick else FULL
    if args.lease_s is not None:
        budget = dataclasses.replace(budget, lease_s=args.lease_s)
    run = run_benchmark(
        "bench-cluster-", args.log_dir, lambda log_dir: run_all(budget, log_dir, set(args.only))
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run, indent=2) + "\n")
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
