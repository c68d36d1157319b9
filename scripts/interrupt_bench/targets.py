"""The headline table: each performance target, from the figures of one run.

Each :class:`Target` names one figure of one workload and how much better than
the peers trio-agent must be there. Its ratio says how many times better
trio-agent is: baseline / trio-agent for a latency, a CPU share or memory (lower
is better), trio-agent / baseline for a rate (higher is better); 1 or more means
trio-agent is at least as good. Against FastAPI the best of its variants counts
(the one with the best figure), so the ratio is the hardest one of them.

Everything here is arithmetic on a run's results: nothing is measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .report import markdown_rows, text_table
from .scenarios import Column
from .stats import ratio

#: The FastAPI peers running with their defaults (uvicorn's WebSocket protocols).
FASTAPI_DEFAULTS = ("fastapi", "fastapi-websockets")


@dataclass(frozen=True)
class Target:
    """One row: a figure of a workload, and the ratio wanted against each peer."""

    workload: str
    figure: str
    #: Dotted path into a server's figures (as :class:`~interrupt_bench.scenarios.Column`).
    path: str
    #: The smallest ratio that meets the target.
    wanted: float = 1.0
    lower_is_better: bool = True
    fastapi: tuple[str, ...] = FASTAPI_DEFAULTS
    #: Whether the asyncio + websockets peer is compared too.
    asyncio: bool = True
    #: A target on trio-agent's own figure (no peer): met when it is at most this.
    at_most: float | None = None

    def value(self, results: dict[str, dict[str, Any]], key: str) -> float | None:
        figures = results.get(key)
        if figures is None:
            return None
        found: Any = figures
        for part in self.path.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        return float(found) if isinstance(found, int | float) else None

    def times_better(self, baseline: float | None, mine: float | None) -> float | None:
        if self.lower_is_better:
            return ratio(baseline, mine, digits=2)
        return ratio(mine, baseline, digits=2)

    def evaluate(self, run: dict[str, Any], ours: str = "trio-agent") -> dict[str, Any]:
        """This target's row from a run's record (``None`` where a figure is missing),
        for the trio-agent row ``ours`` (another source tree's, with ``--tree``)."""
        results = run.get("scenarios", {}).get(self.workload, {}).get("results", {})
        mine = self.value(results, ours)
        row: dict[str, Any] = {
            "workload": self.workload,
            "figure": self.figure,
            "wanted": self.wanted if self.at_most is None else f"<= {self.at_most}",
            "trio_agent": mine,
            "fastapi": None,
            "fastapi_server": None,
            "asyncio": None,
            "fastapi_ratio": None,
            "asyncio_ratio": None,
        }
        if self.at_most is not None:
            row["met"] = None if mine is None else mine <= self.at_most
            row["errors_in"] = []
            return row
        fastapi = [(k, v) for k in self.fastapi if (v := self.value(results, k)) is not None]
        if fastapi:
            pick = min if self.lower_is_better else max
            row["fastapi_server"], row["fastapi"] = pick(fastapi, key=lambda kv: kv[1])
            row["fastapi_ratio"] = self.times_better(row["fastapi"], mine)
        if self.asyncio:
            row["asyncio"] = self.value(results, "asyncio")
            row["asyncio_ratio"] = self.times_better(row["asyncio"], mine)
        ratios = [row["fastapi_ratio"]] + ([row["asyncio_ratio"]] if self.asyncio else [])
        row["met"] = None if None in ratios else all(r >= self.wanted for r in ratios)
        # A server that made errors in the workload (a refused connection, a timeout)
        # measured something else: no verdict on figures that include it.
        compared = [ours, *self.fastapi, *(["asyncio"] if self.asyncio else [])]
        row["errors_in"] = [k for k in compared if (results.get(k) or {}).get("errors")]
        if row["errors_in"]:
            row["met"] = None
        return row


#: The targets, in the order of docs/performance.md.
TARGETS: tuple[Target, ...] = (
    Target("barge-in", "barge-in: INTERRUPT -> ACK p50 ms", "ack_ms.p50"),
    Target("barge-in", "barge-in: INTERRUPT -> ACK p99 ms", "ack_ms.p99"),
    Target("barge-in", "barge-in: INTERRUPT -> cut DONE p50 ms", "done_ms.p50"),
    Target("barge-in", "barge-in: INTERRUPT -> cut DONE p99 ms", "done_ms.p99"),
    Target("barge-in", "barge-in: turn (INTERRUPT -> new first frame) p50 ms", "turnaround_ms.p50"),
    Target("barge-in", "barge-in: turn p99 ms", "turnaround_ms.p99"),
    Target("scale", "scale: server CPU % (same pace)", "server_cpu_percent"),
    Target("scale", "scale: ACK p99 ms", "ack_ms.p99"),
    Target("scale", "scale: RSS KiB per session", "rss_kib_per_session"),
    Target(
        "throughput", "throughput, 1 session: frames/s", "one.frames_per_s", lower_is_better=False
    ),
    Target(
        "throughput", "throughput, S sessions: frames/s", "many.frames_per_s", lower_is_better=False
    ),
    # "At most 1.5 times the better peer's": better / trio-agent >= 1 / 1.5.
    Target("idle", "idle: HEARTBEAT RTT p50 ms", "rtt_ms.p50", wanted=round(1 / 1.5, 2)),
    Target("slow-reader", "slow reader: ACK p50 ms", "ack_ms.p50", wanted=20.0),
    Target("slow-reader", "slow reader: KiB before the ACK p50", "kib_before_ack.p50", wanted=20.0),
    Target(
        "slow-reader",
        "slow reader vs FastAPI with TCP_NOTSENT_LOWAT 16 KiB: ACK p50 ms",
        "ack_ms.p50",
        fastapi=("fastapi-lowat",),
        asyncio=False,
    ),
    Target(
        "slow-reader",
        "slow reader vs FastAPI with TCP_NOTSENT_LOWAT 16 KiB: KiB before the ACK p50",
        "kib_before_ack.p50",
        fastapi=("fastapi-lowat",),
        asyncio=False,
    ),
    Target(
        "upstream",
        "upstream: INTERRUPT read -> upstream EOF p99 ms",
        "rows.interrupt_read_to_upstream_eof.p99_ms",
        at_most=5.0,
    ),
)

HEADERS = [
    "target",
    "trio-agent",
    "best FastAPI",
    "asyncio + websockets",
    "FastAPI ratio",
    "asyncio ratio",
    "wanted",
    "met",
]


def evaluate(run: dict[str, Any], ours: str = "trio-agent") -> list[dict[str, Any]]:
    """Every target's row, for the workloads the run has, for the trio-agent row ``ours``."""
    return [t.evaluate(run, ours) for t in TARGETS if t.workload in run.get("scenarios", {})]


def _cell(value: Any) -> str:
    digits = 0 if isinstance(value, float) and abs(value) >= 100 else 2
    return Column("", "v", digits).cell({"v": value})


def _cells(row: dict[str, Any]) -> list[str]:
    fastapi = _cell(row["fastapi"])
    if row["fastapi_server"] is not None:
        fastapi += f" ({row['fastapi_server']})"
    met = {True: "met", False: "NOT MET", None: "-"}[row["met"]]
    if row.get("errors_in"):
        met = "errors: " + ", ".join(row["errors_in"])
    return [
        row["figure"],
        _cell(row["trio_agent"]),
        fastapi,
        _cell(row["asyncio"]),
        _cell(row["fastapi_ratio"]),
        _cell(row["asyncio_ratio"]),
        str(row["wanted"]) if isinstance(row["wanted"], str) else f">= {row['wanted']:g}",
        met,
    ]


def targets_table(rows: list[dict[str, Any]]) -> str:
    return text_table(HEADERS, [_cells(r) for r in rows])


def targets_markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_rows(HEADERS, [_cells(r) for r in rows])
