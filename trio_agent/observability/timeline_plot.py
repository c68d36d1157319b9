"""Draw an :class:`~trio_agent.observability.timeline.InterruptStory` with matplotlib.

matplotlib is imported when a picture is drawn, so that everything else works
without it. Uses the object-oriented API on an Agg canvas:
no pyplot, no global state, no display needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trio_agent.observability.timeline import InterruptStory, TraceEvent
from trio_agent.observability.trace import (
    READER,
    WRITER,
    request_of_task_label,
    request_task_label,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.text import Annotation


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed; the message says how to get it."""


def draw_timeline(story: InterruptStory, path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``story`` as a PNG at ``path``: one lane per task, time left to right.

    Two panels: the whole story (milliseconds) and a zoom on the INTERRUPT
    (microseconds), where read -> cancel -> ACK written are annotated. Raises
    :class:`PlotUnavailable` when matplotlib is missing.
    """
    try:
        import matplotlib.figure  # noqa: F401  (only to know it is there)
    except ImportError as exc:
        raise PlotUnavailable(
            "no PNG: matplotlib is not installed "
            f"({exc}); install it with `pip install 'trio-agent[demo]'`"
        ) from None
    out = Path(path)
    render(story, out, title=title)
    return out


#: The resolution the picture is laid out and saved at.
DPI = 110
#: Room kept between two labels, in pixels.
_LABEL_GAP_PX = 2.0

_REQUEST_COLOURS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:olive", "tab:cyan"]
_INTERRUPT = "crimson"
_ACK = "forestgreen"


def render(story: InterruptStory, path: Path, *, title: str | None = None) -> None:
    build_figure(story, title=title).savefig(path, dpi=DPI)


def build_figure(story: InterruptStory, *, title: str | None = None) -> Figure:
    """The picture of ``story``, laid out, its labels kept apart (see :func:`_keep_apart`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lanes = story.lanes()
    row = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}
    colour = _colours(story, lanes)
    figure = Figure(figsize=(13, 1.6 + 1.1 * len(lanes)), layout="constrained", dpi=DPI)
    FigureCanvasAgg(figure)
    overview, zoom = figure.subplots(2, 1, height_ratios=[1, 1])

    times = [int(e["t_us"]) - story.read_us for e in story.events]
    span = (min(times), max(times))
    _draw(overview, story, row, colour, scale=1e-3)
    pad = max((span[1] - span[0]) * 0.03, 1.0)
    overview.set_xlim((span[0] - pad) * 1e-3, (span[1] + pad) * 1e-3)
    overview.set_xlabel("ms after the INTERRUPT was read")
    overview.set_title(
        title
        or f"INTERRUPT {story.msg_id} ({story.reason}) -> "
        + (", ".join(story.cut) if story.cut else "nothing to cut"),
        loc="left",
    )

    # The zoom is on the reader's one step: read, cancel, discard, queue the ACK
    # and the DONEs, all before it reads another frame. If the writer put the
    # ACK on the wire soon after, the zoom reaches it too.
    marks = story.milestones()
    step_end = _reader_step_end(story)
    ack = story.first("ack_written", ref=story.msg_id)
    ack_us = int(ack["t_us"]) - story.read_us if ack is not None else None
    end = max(step_end, 1)
    if ack_us is not None and ack_us <= 4 * end:
        end = max(ack_us, 1)
    _draw(zoom, story, row, colour, scale=1.0)
    zoom.set_xlim(-max(end * 0.08, 1.0), end * 1.3)
    zoom.set_xlabel(
        "µs after the INTERRUPT was read: zoom on the reader's step"
        + (" and the ACK written" if ack_us is not None and ack_us <= end else "")
    )
    zoom_labels = _label_reader_step(zoom, story, row)
    overview_labels: list[Annotation] = []
    labelled = {"scope_cancelled": False, "ack_written": False}
    for _, us, event in marks:
        lane = row.get(str(event["task"]))
        kind = str(event["event"])
        if lane is not None and labelled.get(kind) is False:
            labelled[kind] = True  # the first of each is enough
            overview_labels.append(
                overview.annotate(
                    _short(us),
                    (us * 1e-3, lane),
                    xytext=(0, 11),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    annotation_clip=True,
                )
            )
            if kind == "ack_written":
                zoom_labels.append(
                    zoom.annotate(
                        f"ACK written +{us:,} µs",
                        (us, lane),
                        xytext=(0, 11),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        annotation_clip=True,
                    )
                )
    _annotate(overview, marks)

    for axes in (overview, zoom):
        axes.set_yticks(list(row.values()), list(row.keys()))
        axes.set_ylim(-0.7, len(lanes) - 0.3)
        axes.grid(axis="x", alpha=0.25)
        axes.axvline(0, color=_INTERRUPT, linestyle="--", linewidth=1.5)
    zoom.legend(handles=_legend(), loc="upper left", bbox_to_anchor=(1.0, 1.02), fontsize=8)
    # Lay the figure out once and keep that layout: where a label may go depends on
    # where the axes are, and the labels must not move the axes again.
    figure.draw_without_rendering()
    figure.set_layout_engine("none")
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    _keep_apart(overview, overview_labels, renderer)
    _keep_apart(zoom, zoom_labels, renderer)
    return figure


def _keep_apart(axes: Axes, labels: list[Annotation], renderer: RendererBase) -> None:
    """Move labels that would overlap one placed before them, above or below their marker.

    Events a few µs apart put their labels on top of each other (``ACK queued`` over
    ``DONE a``). Each label, in turn, takes the first place, alternately on the other
    side of its marker and then a line further out, where it overlaps none of the labels
    placed before it. Labels whose point is outside the axes are not drawn and take no room.
    """
    xmin, xmax = sorted(axes.get_xlim())
    placed: list[Any] = []
    for label in labels:
        if not label.get_text() or not xmin <= float(label.xy[0]) <= xmax:
            continue
        dx, dy = label.xyann
        below = dy < 0
        height = label.get_window_extent(renderer).height * 72 / DPI + 2
        places = [(below, 0.0), (not below, 0.0)]
        places += [(side, step * height) for step in (1, 2, 3) for side in (below, not below)]
        box = None
        for side_below, further in places:
            label.xyann = (dx, -(abs(dy) + further) if side_below else abs(dy) + further)
            label.set_verticalalignment("top" if side_below else "bottom")
            box = label.get_window_extent(renderer).padded(_LABEL_GAP_PX)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(box)


def _read_index(story: InterruptStory) -> int:
    """Where the story's own INTERRUPT is read (an earlier one may be in its context)."""
    return next(
        i
        for i, e in enumerate(story.events)
        if e["event"] == "interrupt_read" and e.get("msg_id") == story.msg_id
    )


def _reader_step_end(story: InterruptStory) -> int:
    """µs from the read to the reader's last event before any other task's."""
    events = list(story.events)
    start = _read_index(story)
    end = story.read_us
    for event in events[start:]:
        if event["task"] != READER:
            break
        end = int(event["t_us"])
    return end - story.read_us


def _label_reader_step(axes: Axes, story: InterruptStory, row: dict[str, int]) -> list[Annotation]:
    """Name each thing the reader does in its step, under its marker; returns the labels."""
    labels: list[Annotation] = []
    events = list(story.events)
    start = _read_index(story)
    for event in events[start:]:
        if event["task"] != READER:
            break
        kind, rid = event["event"], event.get("request")
        text = {
            "interrupt_read": "read",
            "scope_cancelled": f"cancel {rid}",
            "stream_discarded": f"drop {event.get('count')}",
            "ack_queued": "ACK\nqueued",
            "done_queued": f"DONE\n{rid}",
        }.get(str(kind))
        lane = row.get(request_task_label(str(rid)) if kind == "stream_discarded" else READER)
        if text is None or lane is None:
            continue
        labels.append(
            axes.annotate(
                text,
                (int(event["t_us"]) - story.read_us, lane),
                xytext=(0, -13),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=7.5,
                annotation_clip=True,
            )
        )
    return labels


def _short(us: int) -> str:
    return f"+{us / 1000:,.1f} ms" if us >= 1000 else f"+{us} µs"


def _colours(story: InterruptStory, lanes: list[str]) -> dict[str | None, str]:
    requests = [rid for lane in lanes if (rid := request_of_task_label(lane)) is not None]
    return {rid: _REQUEST_COLOURS[i % len(_REQUEST_COLOURS)] for i, rid in enumerate(requests)}


def _draw(
    axes: Axes,
    story: InterruptStory,
    row: dict[str, int],
    colour: dict[str | None, str],
    *,
    scale: float,
) -> None:
    def x(event: TraceEvent) -> float:
        return (int(event["t_us"]) - story.read_us) * scale

    def at(event: TraceEvent, lane: str | None = None, **style: Any) -> None:
        y = row.get(lane or str(event["task"]))
        if y is not None:
            axes.plot([x(event)], [y], linestyle="none", **style)

    def request_lane(event: TraceEvent) -> str:
        return request_task_label(str(event["request"]))

    opened: dict[str, TraceEvent] = {}
    cleanup: dict[tuple[str | None, str], TraceEvent] = {}
    cancelled: dict[str, TraceEvent] = {}
    ack_queued: TraceEvent | None = None
    draw: dict[str, Callable[[TraceEvent], None]] = {
        "frame_read": lambda e: at(e, marker="|", color="black", markersize=12),
        "interrupt_read": lambda e: at(e, marker="v", color=_INTERRUPT, markersize=11),
        "stream_queued": lambda e: at(
            e, marker="|", color=colour.get(e["request"], "gray"), markersize=12
        ),
        "stream_written": lambda e: at(
            e, WRITER, marker="|", color=colour.get(e["request"], "gray"), markersize=12
        ),
        "stream_discarded": lambda e: at(
            e, request_lane(e), marker="x", color="gray", markersize=10, markeredgewidth=2
        ),
        "scope_cancelled": lambda e: at(e, marker="X", color=_INTERRUPT, markersize=10),
        "cancel_delivered": lambda e: at(e, marker="*", color=_INTERRUPT, markersize=15),
        "late_send": lambda e: at(e, marker="P", color="magenta", markersize=11),
        "ack_written": lambda e: at(e, marker="D", color=_ACK, markersize=10),
        "done_queued": lambda e: at(
            e, marker="s", markerfacecolor="none", color=colour.get(e["request"], "gray")
        ),
        "done_written": lambda e: at(
            e, marker="s", color=colour.get(e["request"], "gray"), markersize=9
        ),
        "control_queued": lambda e: at(e, marker=".", color="gray"),
        "control_written": lambda e: at(e, marker=".", color="gray"),
        "nursery_cancelled": lambda e: at(e, marker="X", color="darkorange", markersize=10),
    }
    for event in story.events:
        kind = event["event"]
        if kind in draw:
            draw[kind](event)
        if kind == "scope_opened":
            opened[str(event["request"])] = event
        elif kind == "scope_closed":
            start = opened.get(str(event["request"]))
            y = row.get(request_lane(event))
            if y is not None:
                left = x(start) if start is not None else axes.get_xlim()[0]
                axes.plot(
                    [left, x(event)],
                    [y, y],
                    color=colour.get(event["request"], "gray"),
                    alpha=0.25,
                    linewidth=7,
                    solid_capstyle="butt",
                )
                at(event, request_lane(event), marker="|", color="black", markersize=16)
        elif kind == "cleanup_started":
            cleanup[(event["request"], str(event["what"]))] = event
        elif kind == "cleanup_ended":
            start = cleanup.get((event["request"], str(event["what"])))
            if start is not None:
                y = row.get(str(event["task"]), 0)
                axes.broken_barh(
                    [(x(start), x(event) - x(start))],
                    (y - 0.28, 0.56),
                    color="orange",
                    alpha=0.6,
                )
        elif kind == "scope_cancelled":
            cancelled[str(event["request"])] = event
        elif kind == "cancel_delivered":
            source = cancelled.get(str(event["request"]))
            if source is not None:
                _arrow(axes, (x(source), row[READER]), (x(event), row[str(event["task"])]))
        elif kind == "ack_queued":
            ack_queued = event
            at(event, marker="o", color=_ACK, markersize=8)
        elif kind == "ack_written" and ack_queued is not None:
            _arrow(axes, (x(ack_queued), row[READER]), (x(event), row[WRITER]), _ACK)


def _arrow(
    axes: Axes, start: tuple[float, float], end: tuple[float, float], colour: str = _INTERRUPT
) -> None:
    axes.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.7, "shrinkA": 4, "shrinkB": 6},
    )


def _annotate(axes: Axes, marks: list[tuple[str, int, TraceEvent]]) -> None:
    text = "\n".join(f"{label}: +{us:,} µs" for label, us, _ in marks)
    axes.text(
        1.01,
        1.0,
        "after the INTERRUPT was read\n" + text,
        transform=axes.transAxes,
        ha="left",
        va="top",
        fontsize=8.5,
        family="monospace",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "lightgray"},
    )


def _legend() -> list[Line2D]:
    from matplotlib.lines import Line2D

    def handle(label: str, **style: Any) -> Line2D:
        return Line2D([], [], linestyle="none", label=label, **style)

    return [
        handle("frame read", marker="|", color="black", markersize=10),
        Line2D([], [], color=_INTERRUPT, linestyle="--", label="INTERRUPT read"),
        handle("STREAM queued / written", marker="|", color="tab:red", markersize=10),
        handle("STREAM discarded", marker="x", color="gray", markeredgewidth=2),
        handle("scope cancelled", marker="X", color=_INTERRUPT),
        handle("Cancelled out of the agent", marker="*", color=_INTERRUPT, markersize=12),
        handle("ACK queued", marker="o", color=_ACK),
        handle("ACK written", marker="D", color=_ACK),
        handle("DONE queued / written", marker="s", color="tab:red"),
        Line2D([], [], color="orange", linewidth=6, alpha=0.6, label="shielded cleanup"),
        Line2D([], [], color="tab:red", linewidth=6, alpha=0.25, label="request scope open"),
        handle("sent after the end", marker="P", color="magenta"),
    ]
