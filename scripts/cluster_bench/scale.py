"""Figure 5: sessions at a given ACK latency, ``--workers 2`` vs one process.

Both with ``--redis-url`` (a real cluster setup: every frame mirrored), each its
own process tree on this machine. The interrupt benchmark's scale workload: S
sessions each streaming ``lorem`` at 2 words/s, a sample of them interrupted at
random moments of a window; S grows step by step, the two servers in turn at each
step, until the ACK p99 passes the threshold (or fewer than 90% of the frames due
arrive, or a connection fails). Reported: the largest S that stayed under it, per
server, and their ratio. Target >= 1.7.

The load generator runs on the same machine (one process, asyncio): its CPU is
measured and reported, since it competes with the servers for the two cores.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import psutil
from interrupt_bench.scenarios import Budget as InterruptBudget
from interrupt_bench.scenarios import Scale

from .common import Budget, ServerTree, fmt, row

TARGET_RATIO = 1.7
#: A step counts only if this share (%) of the frames due arrived (the pace was kept).
MIN_DELIVERED_PERCENT = 90.0


def passed(figures: dict[str, Any], budget: Budget) -> bool:
    """Under the threshold, the pace kept, no connection refused. An interrupted
    session stops streaming (at a uniform moment of the window): the frames due are
    those of the sessions not yet cut."""
    p99 = figures["ack_ms"]["p99"]
    delivered = figures["delivered_percent"]
    sessions = figures["sessions_open"] or 1
    due = 100 * (1 - 0.5 * min(budget.scale_interrupts, sessions) / sessions)
    figures["due_percent"] = round(due, 1)
    return (
        p99 is not None
        and p99 <= budget.ack_threshold_ms
        and delivered is not None
        and delivered >= MIN_DELIVERED_PERCENT / 100 * due
        and figures["errors"] == 0
        and figures["sessions_open"] == figures["sessions_wanted"]
    )


async def measure(single: ServerTree, workers: ServerTree, budget: Budget) -> dict[str, Any]:
    me = psutil.Process()
    servers = {"one_process": single, "workers_2": workers}
    steps: dict[str, list[dict[str, Any]]] = {key: [] for key in servers}
    best: dict[str, int] = {key: 0 for key in servers}
    going = set(servers)
    for sessions in budget.scale_steps:
        for key, server in servers.items():
            if key not in going:
                continue
            scale_budget = dataclasses.replace(
                InterruptBudget(),
                scale_sessions=sessions,
                scale_interrupts=budget.scale_interrupts,
                scale_window_s=budget.scale_window_s,
                seed=budget.seed,
            )
            client_cpu = sum(me.cpu_times()[:2])
            started = time.perf_counter()
            figures = await Scale().run(server, scale_budget)
            wall = time.perf_counter() - started
            figures.pop("samples", None)
            figures["client_cpu_percent"] = round(
                100 * (sum(me.cpu_times()[:2]) - client_cpu) / wall, 1
            )
            figures["passed"] = passed(figures, budget)
            steps[key].append(figures)
            if figures["passed"]:
                best[key] = sessions
            else:
                going.discard(key)
        if not going:
            break
    ratio = best["workers_2"] / best["one_process"] if best["one_process"] else None
    return {
        "ack_threshold_ms": budget.ack_threshold_ms,
        "min_delivered_percent": MIN_DELIVERED_PERCENT,
        "steps_tried": list(budget.scale_steps),
        "max_sessions": best,
        "ratio": None if ratio is None else round(ratio, 2),
        "ceiling_reached": {key: key in going for key in servers},
        "met": None if ratio is None else ratio >= TARGET_RATIO,
        "steps": steps,
        "client_cpu_percent_max": max(
            (s["client_cpu_percent"] for runs in steps.values() for s in runs), default=None
        ),
    }


def rows(f: dict[str, Any]) -> list[list[str]]:
    best = f["max_sessions"]
    capped = [k for k, v in f["ceiling_reached"].items() if v]
    note = f"; still under at the last step: {', '.join(capped)}" if capped else ""
    return [
        row(
            f"5. sessions at ACK p99 <= {f['ack_threshold_ms']:g} ms, workers 2 / 1 process",
            f"x{fmt(f['ratio'], 2)} ({best['workers_2']} vs {best['one_process']}; load "
            f"generator up to {fmt(f['client_cpu_percent_max'], 0)}% of a core{note})",
            f">= {TARGET_RATIO:g}x",
            f["met"],
        )
    ]
