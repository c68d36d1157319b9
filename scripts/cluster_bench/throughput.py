"""Figure 1: throughput with mirroring vs without, on one node.

The same server twice, each its own process: A with ``--redis-url`` (every frame
also goes to the session's Redis stream), B without (the single process as it
always was). Clients stream ``lorem`` flat out (``words_per_s: 0``), 1 session
and 20 sessions, rounds interleaved A B A B; frames/s and the server's CPU per
frame (psutil on its PID) per round, the ratio A/B per pair, its median reported.
Target: with mirroring >= 80% of the frames/s without.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench_resume import stream_round
from interrupt_bench.servers import RunningServer
from interrupt_bench.stats import ratio, summarize

from .common import Budget, fmt, row

TARGET_RATIO = 0.8
SESSION_COUNTS = (1, 20)


async def measure(mirrored: RunningServer, plain: RunningServer, budget: Budget) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for sessions in SESSION_COUNTS:
        rounds: dict[str, list[dict[str, Any]]] = {"mirrored": [], "plain": []}
        for _ in range(budget.throughput_rounds):
            for key, server in (("mirrored", mirrored), ("plain", plain)):
                rounds[key].append(await stream_round(server, sessions, budget.throughput_frames))
        pairs = list(zip(rounds["mirrored"], rounds["plain"], strict=True))
        rates = [r for a, b in pairs if (r := ratio(a["frames_per_s"], b["frames_per_s"], 4))]
        cpus = [
            r
            for a, b in pairs
            if (r := ratio(a["server_cpu_s_per_100k_frames"], b["server_cpu_s_per_100k_frames"], 4))
        ]
        entry: dict[str, Any] = {
            key: {
                "frames_per_s": summarize([r["frames_per_s"] for r in runs if r["frames_per_s"]]),
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
        entry["frames_per_s_ratio_median"] = statistics.median(rates) if rates else None
        entry["cpu_per_frame_ratio_median"] = statistics.median(cpus) if cpus else None
        entry["met"] = (
            entry["frames_per_s_ratio_median"] is not None
            and entry["frames_per_s_ratio_median"] >= TARGET_RATIO
        )
        figures[f"sessions_{sessions}"] = entry
    return figures


def rows(figures: dict[str, Any]) -> list[list[str]]:
    out = []
    for sessions in SESSION_COUNTS:
        entry = figures[f"sessions_{sessions}"]
        measured = (
            f"{fmt(entry['frames_per_s_ratio_median'], 3)} "
            f"({fmt(entry['mirrored']['frames_per_s']['p50'], 0)} vs "
            f"{fmt(entry['plain']['frames_per_s']['p50'], 0)} frames/s; CPU/frame x"
            f"{fmt(entry['cpu_per_frame_ratio_median'], 2)})"
        )
        out.append(
            row(
                f"1. throughput mirrored/plain, {sessions} session(s)",
                measured,
                f">= {TARGET_RATIO:.2f}",
                entry["met"],
            )
        )
    return out
