#!/usr/bin/env python3
"""Interrupt latency under load: trio-agent against FIFO, asyncio and FastAPI + uvicorn.

Starts each server under test as its own process on 127.0.0.1, drives it from
this process (the load generator), and prints one table per workload, with the
ratios against the baselines measured in the same run, then the targets table
(each target's ratio against the best FastAPI variant and the asyncio design, met
or not). ``docs/performance.md`` explains every figure.

    scripts/bench_interrupt.py                    # full run (about five minutes)
    scripts/bench_interrupt.py --quick            # a minute or two
    scripts/bench_interrupt.py --json out.json --plot out.png
    scripts/bench_interrupt.py --scenario barge-in --server trio-agent --server fifo
    scripts/bench_interrupt.py --scenario scale --tree before=/tmp/before   # a commit before

Also reachable as ``trio-agent bench``. Needs the ``bench`` extra
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from interrupt_bench.report import markdown_table, plot, table
from interrupt_bench.runs import new_run, run_benchmark, serving
from interrupt_bench.scenarios import FULL, QUICK, SCENARIOS, Budget, Scenario
from interrupt_bench.servers import SERVERS, RunningServer, tree_server
from interrupt_bench.targets import evaluate, targets_markdown, targets_table


def build_parser(prog: str = "bench_interrupt.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts: a minute or two")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure here")
    parser.add_argument("--plot", type=Path, metavar="PATH", help="write the PNG here")
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH", help="write the tables as Markdown here"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this workload (repeatable; default: all)",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=list(SERVERS),
        help="run only against this server (repeatable; default: each workload's own list)",
    )
    parser.add_argument(
        "--tree",
        action="append",
        metavar="LABEL=PATH",
        help="also run trio-agent from this source tree, next to the trio-agent row of "
        "every workload that has one (repeatable): the commit before a change, say",
    )
    parser.add_argument(
        "--log-dir", type=Path, help="keep the servers' logs here (default: a temporary folder)"
    )
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


def budget_from(args: argparse.Namespace) -> Budget:
    preset = QUICK if args.quick else FULL
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Budget)
        if getattr(args, f.name) is not None
    }
    return dataclasses.replace(preset, **overrides)


def parse_trees(specs: list[str]) -> list[tuple[str, str]]:
    """``LABEL=PATH`` pairs; a label names the tree's rows and must be new."""
    pairs = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--tree {spec!r}: expected LABEL=PATH")
        if not (Path(path) / "trio_agent" / "__init__.py").is_file():
            raise SystemExit(f"--tree {spec!r}: {path} has no trio_agent package")
        pairs.append((label, path))
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise SystemExit("--tree: each tree needs a label of its own")
    return pairs


def with_trees(servers: list[str], trees: list[str]) -> list[str]:
    """The tree rows right after the ``trio-agent`` row, where a workload has one."""
    if "trio-agent" not in servers:
        return servers
    at = servers.index("trio-agent") + 1
    return [*servers[:at], *trees, *servers[at:]]


def rotated(servers: list[RunningServer], round_: int) -> list[RunningServer]:
    """The order of the servers in round ``round_`` (0 first): one place later each round."""
    at = round_ % len(servers) if servers else 0
    return [*servers[at:], *servers[:at]]


async def run_scenario(
    scenario: Scenario, servers: list[RunningServer], budget: Budget
) -> dict[str, Any]:
    """Drive the servers one after the other, never two under load at once; with
    several rounds, in turn, each round starting one server later (A B C, B C A,
    C A B, ...), so that no server always runs right after the same one or always
    last (in four runs of three or four trio-agent trees in a fixed order, the
    tree run last came out cheapest per frame, whichever tree it was)."""
    runs: dict[str, list[dict[str, Any]]] = {s.spec.key: [] for s in servers}
    for round_ in range(scenario.rounds(budget)):
        for server in rotated(servers, round_):
            t0 = time.perf_counter()
            try:
                figures = await scenario.run(server, budget)
            except Exception as exc:  # one broken server must not lose the whole run
                print(f"   {server.spec.label}: failed: {exc!r}", flush=True)
                figures = {"errors": 1, "failed": repr(exc), "first_problems": [repr(exc)]}
            figures["wall_s"] = round(time.perf_counter() - t0, 2)
            # Other work on the machine shows here: read the figures with it.
            figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            runs[server.spec.key].append(figures)
    results = {key: scenario.merge(figures) for key, figures in runs.items()}
    return {"title": scenario.title, "results": results, "ratios": scenario.ratios(results)}


async def run_all(args: argparse.Namespace, budget: Budget, log_dir: Path) -> dict[str, Any]:
    chosen = args.scenario or list(SCENARIOS)
    trees = [tree_server(label, Path(path)) for label, path in parse_trees(args.tree or [])]
    SERVERS.update((spec.key, spec) for spec in trees)
    run = new_run("bench_interrupt.py", dataclasses.asdict(budget))
    run["servers"] = {
        key: {"label": s.label, "description": s.description, "argv": list(s.argv)}
        for key, s in SERVERS.items()
    }
    run["scenarios"] = {}
    plan = {
        name: with_trees(
            [k for k in SCENARIOS[name].servers if not args.server or k in args.server],
            [spec.key for spec in trees],
        )
        for name in chosen
    }
    # Every server is started once, all at the same time (start-up is mostly imports),
    # and serves every workload that names it; each figure is a difference measured
    # around its own workload, so what ran before does not count.
    keys = list(dict.fromkeys(k for servers in plan.values() for k in servers))
    started = {key: RunningServer(SERVERS[key], log_dir) for key in keys}
    async with serving(started.values(), run):
        for name, servers in plan.items():
            if not servers:
                continue
            scenario = SCENARIOS[name]
            print(f"\n== {scenario.title}", flush=True)
            result = await run_scenario(scenario, [started[k] for k in servers], budget)
            run["scenarios"][name] = result
            print(table(scenario, result["results"]))
            for key, value in result["ratios"].items():
                print(f"   {key}: {json.dumps(value)}")
            sys.stdout.flush()
    run["targets"] = evaluate(run)
    # The same table for each source tree's row: a change and the commit before it,
    # against the same peers in the same run.
    run["tree_targets"] = {spec.key: evaluate(run, spec.key) for spec in trees}
    if run["targets"]:
        print("\n== Targets (ratio: how many times better trio-agent is; >= wanted meets it)")
        print(targets_table(run["targets"]))
    for key, rows in run["tree_targets"].items():
        print(f"\n== Targets of {SERVERS[key].label} (the same peers, the same run)")
        print(targets_table(rows))
    return run


def main(argv: list[str] | None = None, prog: str = "bench_interrupt.py") -> int:
    """Run the benchmark; ``prog`` is the name usage and errors show (``trio-agent
    bench`` runs this with its own)."""
    args = build_parser(prog).parse_args(argv)
    budget = budget_from(args)
    run = run_benchmark(
        "bench-interrupt-", args.log_dir, lambda log_dir: run_all(args, budget, log_dir)
    )
    if args.json:
        args.json.write_text(json.dumps(run, indent=2) + "\n")
        print(f"figures: {args.json}")
    if args.markdown:
        args.markdown.write_text(
            "\n\n".join(
                f"**{SCENARIOS[name].title}**\n\n{markdown_table(SCENARIOS[name], r['results'])}"
                for name, r in run["scenarios"].items()
            )
            + (f"\n\n**Targets**\n\n{targets_markdown(run['targets'])}" if run["targets"] else "")
            + "".join(
                f"\n\n**Targets of {SERVERS[key].label}**\n\n{targets_markdown(rows)}"
                for key, rows in run.get("tree_targets", {}).items()
            )
            + "\n"
        )
    if args.plot:
        plot(run, SCENARIOS, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
