"""Turning a run's figures into a text table and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .scenarios import Scenario
from .servers import SERVERS


def table(scenario: Scenario, results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per server, the scenario's columns."""
    headers = ["server", *(c.header for c in scenario.columns)]
    rows = [
        [SERVERS[key].label, *(c.cell(figures) for c in scenario.columns)]
        for key, figures in results.items()
    ]
    return text_table(headers, rows)


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """Cells in columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def markdown_table(scenario: Scenario, results: dict[str, dict[str, Any]]) -> str:
    """The same table in Markdown (what docs/performance.md quotes)."""
    headers = ["server", *(c.header for c in scenario.columns)]
    rows = [
        [SERVERS[key].label, *(c.cell(figures) for c in scenario.columns)]
        for key, figures in results.items()
    ]
    return markdown_rows(headers, rows)


def markdown_rows(headers: list[str], rows: list[list[str]]) -> str:
    """Cells as a Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines.extend("| " + " | ".join(cells) + " |" for cells in rows)
    return "\n".join(lines)


#: One colour per server, the same in every panel.
COLOURS = {
    "trio-agent": "#1f77b4",
    "fifo": "#ff7f0e",
    "asyncio": "#2ca02c",
    "ceiling": "#7f7f7f",
    "lowat": "#9467bd",
    "fastapi": "#d62728",
    "fastapi-websockets": "#e377c2",
    "fastapi-wsproto": "#bcbd22",
    "fastapi-lowat": "#8c564b",
}


#: A source tree's rows (``--tree``): greys, one per tree, in the order they came.
TREE_COLOURS = ("#7f7f7f", "#444444", "#b0b0b0", "#222222")


def colour_of(key: str) -> str:
    """The plot colour of a server's rows."""
    if key in COLOURS:
        return COLOURS[key]
    trees = [k for k in SERVERS if k.startswith("tree-")]
    return TREE_COLOURS[trees.index(key) % len(TREE_COLOURS)] if key in trees else "#17becf"


def plot(run: dict[str, Any], scenarios: dict[str, Scenario], path: Path) -> None:
    """ACK-latency CDFs (one panel per workload that has them) and stale frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    with_cdf = [
        name for name, s in scenarios.items() if s.cdf is not None and name in run["scenarios"]
    ]
    panels = len(with_cdf) + 1
    columns = 2
    rows = (panels + columns - 1) // columns
    fig, grid = plt.subplots(rows, columns, figsize=(12, 4.3 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax, name in zip(axes, with_cdf, strict=False):
        scenario = scenarios[name]
        assert scenario.cdf is not None
        for key, figures in run["scenarios"][name]["results"].items():
            samples = figures.get("samples", {}).get(scenario.cdf, [])
            if not samples:
                continue
            n = len(samples)
            ax.step(
                samples,
                [(i + 1) / n for i in range(n)],
                where="post",
                color=colour_of(key),
                label=f"{SERVERS[key].label} (n={n})",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("INTERRUPT sent -> INTERRUPT_ACK read (ms, log scale)")
        ax.set_ylabel("fraction of interrupts")
        ax.set_title(scenario.title.split(":")[0] + ": ACK latency, CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")

    ax = axes[len(with_cdf)]
    labels: list[str] = []
    values: list[int] = []
    colours: list[str] = []
    for name, scenario_run in run["scenarios"].items():
        for key, figures in scenario_run["results"].items():
            if "stale_frames" in figures and scenarios[name].cdf is not None:
                labels.append(f"{name}: {SERVERS[key].label}")
                values.append(int(figures["stale_frames"]))
                colours.append(colour_of(key))
    bars = ax.barh(range(len(values)), values, color=colours)
    ax.bar_label(bars, padding=3)
    ax.set_yticks(range(len(values)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max([1, *values]) * 1.2)
    ax.set_xlabel("STREAM frames received after the ACK that named their request")
    ax.set_title("Stale frames (every one is a bug)")
    for extra in axes[panels:]:
        extra.set_visible(False)
    fig.suptitle(f"bench_interrupt.py, {run['started']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
