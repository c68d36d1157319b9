#!/usr/bin/env python3
"""What a workload costs in counts that the machine's load cannot change.

Runs one workload of ``scripts/bench_interrupt.py`` against trio-agent servers
from one or more source trees (``--tree LABEL=PATH``; this checkout by default),
each started under a counting wrapper (:mod:`interrupt_bench.counting_serve`),
and prints, per tree, over the server's life from its first session on:

- Trio **task steps** and **scheduler passes** (a Trio instrument);
- **STREAM frames** written and the **batches** they left in;
- **write** and **read system calls** (``/proc/<pid>/io``).

Latency and CPU time move with whatever else the machine does; these counts
do not, so a change that saves a scheduler pass or a system call per frame shows
here in one run. ``docs/performance.md`` ("Tuning the hot path") has runs.

    .venv/bin/python scripts/count_steps.py --scenario scale --tree before=/tmp/before --tree after=.
    .venv/bin/python scripts/count_steps.py --scenario barge-in --tree before=/tmp/before --tree after=.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_interrupt
from interrupt_bench import servers
from interrupt_bench.scenarios import SCENARIOS

SCRIPTS = Path(__file__).resolve().parent
WRAPPER = SCRIPTS / "interrupt_bench" / "counting_serve.py"

#: Small enough for a minute or two; the counts per frame do not depend on it.
WORKLOADS = {
    "barge-in": ["--sessions", "20", "--trials", "20", "--latency-rounds", "1"],
    "throughput": ["--sessions", "20", "--throughput-rounds", "1"],
    "scale": ["--scale-rounds", "1"],
    "idle": ["--heartbeats", "300"],
}


def counting(label: str, tree: Path) -> servers.ServerSpec:
    """The ``--tree`` server of ``tree``, started under the counting wrapper."""
    spec = servers.tree_server(label, tree)
    argv = list(spec.argv)
    at = argv.index("-m")
    argv[at : at + 2] = [str(WRAPPER), spec.key]
    return dataclasses.replace(spec, argv=tuple(argv))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--tree", action="append", metavar="LABEL=PATH")
    parser.add_argument("--json", type=Path, help="write the counts here")
    args = parser.parse_args(argv)
    trees = bench_interrupt.parse_trees(args.tree or [f"this={SCRIPTS.parent}"])
    with tempfile.TemporaryDirectory(prefix="count-steps-") as folder:
        os.environ["TRIO_AGENT_COUNTS"] = folder
        keys = []
        for label, path in trees:
            spec = counting(label, Path(path))
            servers.SERVERS[spec.key] = spec
            keys.append(spec.key)
        # The trees run as plain servers of the benchmark (no trio-agent row of
        # this checkout unless it is one of the trees), in turn.
        scenario = SCENARIOS[args.scenario]
        scenario_servers = scenario.servers
        scenario.servers = tuple(keys)  # type: ignore[misc]
        try:
            code = bench_interrupt.main(
                ["--scenario", args.scenario, *(a for k in keys for a in ("--server", k))]
                + WORKLOADS[args.scenario]
            )
        finally:
            scenario.servers = scenario_servers  # type: ignore[misc]
        counts = {}
        for key in keys:
            found = sorted(Path(folder).glob(f"{key}.*.json"))
            if not found:
                raise SystemExit(f"{key}: its server left no counts (killed before it exited?)")
            counts[key] = json.loads(found[0].read_text())
    print(f"\n== counts over each server's life ({args.scenario})")
    print(
        f"{'tree':14} {'frames':>8} {'steps/frame':>12} {'passes/frame':>13} "
        f"{'frames/batch':>13} {'writes/frame':>13} {'steps':>9} {'writes':>8}"
    )
    for key, c in counts.items():
        frames = max(c["stream_frames"], 1)
        print(
            f"{key.removeprefix('tree-'):14} {c['stream_frames']:>8} {c['steps'] / frames:>12.2f} "
            f"{c['passes'] / frames:>13.2f} {c['stream_frames'] / max(c['batches'], 1):>13.2f} "
            f"{c['syscw'] / frames:>13.3f} {c['steps']:>9} {c['syscw']:>8}"
        )
    if args.json:
        args.json.write_text(json.dumps({"scenario": args.scenario, "counts": counts}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
