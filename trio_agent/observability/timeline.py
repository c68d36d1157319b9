"""Read a trace and tell the story of one interrupt: as text, and as a picture.

A trace (see :mod:`trio_agent.observability.trace`) is a flat list of events. This module picks
the events that tell how one INTERRUPT travelled: what its session was doing just
before, the reader reading it and cancelling scopes, the writer putting the ACK
on the wire, the agents seeing ``Cancelled`` and cleaning up, the DONEs going
out. :func:`narrate` prints that story for a terminal; :func:`draw_timeline`
draws it with a lane per task (matplotlib, from the ``demo`` extra).

Everything but :func:`draw_timeline` is pure: events in, text out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trio_agent.observability.trace import READER, WRITER, request_task_label

TraceEvent = Mapping[str, Any]

#: STREAM events that narration folds into one line when they come in a row.
_FOLDED = {"stream_queued", "stream_written"}
#: How many STREAM events before the INTERRUPT a story shows.
_CONTEXT_FRAMES = 6


def load_trace(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines trace file (blank lines are skipped).

    Raises :class:`ValueError` naming the line if one is not a JSON object.
    """
    events = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(event, dict) or "event" not in event or "t_us" not in event:
                raise ValueError(f"{path}:{number}: not a trace event")
            events.append(event)
    return events


@dataclass(frozen=True)
class InterruptStory:
    """One INTERRUPT and the events around it, in one session.

    ``events`` runs from a few STREAM frames before the INTERRUPT was read to the
    moment its last cut request was over (DONE written and scope closed).
    Times in the milestones are microseconds after the INTERRUPT was read.
    """

    session: str
    msg_id: str
    target: str | None
    reason: str | None
    read_us: int
    cut: tuple[str, ...]
    events: tuple[TraceEvent, ...]

    def lanes(self) -> list[str]:
        """Task lanes, top to bottom: reader, writer, the cut requests, then the others."""
        seen = list(dict.fromkeys(str(e["task"]) for e in self.events))
        cut_lanes = [request_task_label(rid) for rid in self.cut]
        order = [READER, WRITER, *cut_lanes]
        return [lane for lane in order if lane in seen or lane in cut_lanes] + [
            lane for lane in seen if lane not in order
        ]

    def first(self, event: str, **match: Any) -> TraceEvent | None:
        """The first event of kind ``event`` whose fields equal ``match``."""
        for e in self.events:
            if e["event"] == event and all(e.get(k) == v for k, v in match.items()):
                return e
        return None

    def milestones(self) -> list[tuple[str, int, TraceEvent]]:
        """The moments worth a headline, in time order: ``(label, µs after the read, event)``."""
        marks: list[tuple[str, TraceEvent | None]] = [
            ("INTERRUPT_ACK written", self.first("ack_written", ref=self.msg_id))
        ]
        for rid in self.cut:
            marks += [
                (f"scope of {rid} cancelled", self.first("scope_cancelled", request=rid)),
                (f"Cancelled out of {rid}'s agent", self.first("cancel_delivered", request=rid)),
                (f"DONE of {rid} written", self.first("done_written", request=rid)),
                (f"scope of {rid} closed", self.first("scope_closed", request=rid)),
            ]
        found = [(label, int(e["t_us"]) - self.read_us, e) for label, e in marks if e is not None]
        return sorted(found, key=lambda mark: mark[1])


def interrupt_stories(events: Iterable[TraceEvent]) -> list[InterruptStory]:
    """Every INTERRUPT in the trace, each with its story."""
    events = list(events)
    return [
        _story(events, index) for index, e in enumerate(events) if e["event"] == "interrupt_read"
    ]


def pick_story(
    events: Iterable[TraceEvent], *, request_id: str | None = None, msg_id: str | None = None
) -> InterruptStory:
    """The story of the INTERRUPT that cut ``request_id`` (or has ``msg_id``).

    With neither, the first INTERRUPT that cut at least one request. Raises
    :class:`LookupError` with a message saying what the trace does hold.
    """
    stories = interrupt_stories(events)
    if not stories:
        raise LookupError("the trace holds no INTERRUPT")
    for story in stories:
        if request_id is not None and request_id in story.cut:
            return story
        if msg_id is not None and story.msg_id == msg_id:
            return story
    if request_id is None and msg_id is None:
        return next((s for s in stories if s.cut), stories[0])
    cut = sorted({rid for s in stories for rid in s.cut})
    wanted = f"request {request_id!r}" if request_id is not None else f"INTERRUPT {msg_id!r}"
    raise LookupError(
        f"no INTERRUPT in the trace cut {wanted}; interrupted requests: {', '.join(cut) or 'none'}"
    )


def _story(events: Sequence[TraceEvent], index: int) -> InterruptStory:
    read = events[index]
    session, msg_id = read["session"], read["msg_id"]
    in_session = [e for e in events if e["session"] == session]
    start = in_session.index(read)
    cut = tuple(
        str(e["request"])
        for e in in_session[start:]
        if e["event"] == "scope_cancelled" and e.get("by") == msg_id
    )
    # Back to the first of the last few STREAM events of the cut requests (or of
    # anyone, for an INTERRUPT that cut nothing), never past a scope opening.
    first = start
    frames = 0
    for i in range(start - 1, -1, -1):
        e = in_session[i]
        if e["event"] in _FOLDED and (not cut or e["request"] in cut):
            frames += 1
            first = i
            if frames >= _CONTEXT_FRAMES:
                break
        elif e["event"] == "scope_opened" and e["request"] in cut:
            first = i
            break
    # Forward to the end of every cut request (DONE written and scope closed) and
    # to the ACK written.
    pending = {("done_written", rid) for rid in cut} | {("scope_closed", rid) for rid in cut}
    pending.add(("ack_written", msg_id))
    last = start
    for i in range(start, len(in_session)):
        e = in_session[i]
        key = (e["event"], e.get("ref") if e["event"] == "ack_written" else e["request"])
        if key in pending:
            pending.discard(key)
            last = i
            if not pending:
                break
    return InterruptStory(
        session=str(session),
        msg_id=str(msg_id),
        target=read.get("request"),
        reason=read.get("reason"),
        read_us=int(read["t_us"]),
        cut=cut,
        events=tuple(in_session[first : last + 1]),
    )


# --------------------------------------------------------------------------- text


#: How each event reads, for the events a template can say.
_TEMPLATES = {
    "session_opened": "session opened",
    "scope_opened": "scope of {request} opened: agent {agent}, deadline {timeout_s:g} s",
    "stream_queued": "STREAM {request} seq={seq} queued",
    "stream_written": "STREAM {request} seq={seq} written",
    "cleanup_started": "shielded cleanup {what!r} started (at most {timeout_s:g} s)",
    "ack_queued": "INTERRUPT_ACK for {ref} queued on the priority lane (cuts {interrupted})",
    "ack_written": "INTERRUPT_ACK for {ref} written, {latency_us} µs after its INTERRUPT was read",
    "done_queued": "DONE {request} queued on the {lane} lane ({status})",
    "done_written": "DONE {request} written: {status}, frames={frames}",
    "control_queued": "{msg_type} queued",
    "control_written": "{msg_type} written",
    "late_send": "stream.send for {request} after the request ended (ClosedResourceError)",
    "scope_closed": "scope of {request} closed: {outcome}",
    "nursery_cancelled": "session nursery cancelled ({reason})",
    "session_closed": "session closed ({reason})",
}


def describe(event: TraceEvent) -> str:
    """One event in words, e.g. ``STREAM r1 seq=3 written``."""
    e = event
    rid = e.get("request")
    kind = e["event"]
    if kind == "frame_read":
        return f"{e.get('msg_type')} {e.get('msg_id') or ''} read" + (f" ({rid})" if rid else "")
    if kind == "interrupt_read":
        return f"INTERRUPT {e.get('msg_id')} read: target {rid or 'all requests'}, reason {e.get('reason')}"
    if kind == "scope_cancelled":
        by = e.get("by")
        return f"scope of {rid} cancelled" + (f" by {by}" if by else "") + f" ({e.get('reason')})"
    if kind == "cancel_delivered":
        stack = e.get("stack") or []
        where = f" in {stack[-1]}" if stack else ""
        return (
            f"Cancelled out of {rid}'s agent (raised at {e.get('checkpoint')}{where}); "
            f"source={e.get('source')}"
            + (f", from {e.get('source_task')}" if e.get("source_task") else "")
        )
    if kind == "stream_discarded" and isinstance(count := e.get("count"), int):
        first, last = e.get("first_seq"), e.get("last_seq")
        seqs = f"seq {first}" if first == last else f"seq {first}..{last}"
        frames = "frame" if count == 1 else "frames"
        return f"{count} queued STREAM {frames} of {rid} discarded ({seqs}): never sent"
    if kind == "deadline_passed" and isinstance(e.get("timeout_s"), int | float):
        return (
            f"deadline of {rid} passed ({e.get('timeout_s'):g} s after its scope opened): "
            "Trio's clock cancels the scope"
        )
    if kind == "cleanup_ended":
        outcome = "ran out of time" if e.get("timed_out") else "ended"
        return f"shielded cleanup {e.get('what')!r} {outcome}"
    template = _TEMPLATES.get(str(kind))
    if template is not None:
        try:
            return template.format_map(e)
        except (KeyError, ValueError, TypeError):
            pass  # an event from another version of the recorder: show it raw
    fields = {k: v for k, v in e.items() if k not in ("t_us", "event", "session", "task")}
    return f"{kind} {fields}"


def timeout_story(events: Iterable[TraceEvent], request_id: str) -> list[TraceEvent]:
    """The events of ``request_id`` with its deadline marked, in time order.

    Nobody writes an event when a scope's deadline passes: Trio's clock cancels the
    scope, and the agent only hears of it at its next checkpoint (a cleanup it then
    starts shows up *before* "Cancelled out of the agent", which is logged when the
    exception leaves it). The deadline is put back from ``scope_opened``: its time
    plus ``timeout_s``, as a ``deadline_passed`` event (the scope is entered, and its
    relative deadline fixed, just before that event is recorded: it is a few µs late at most).
    A request whose scope closed before its deadline gets no mark.
    """
    mine = [e for e in events if e.get("request") == request_id]
    opened = next((e for e in mine if e["event"] == "scope_opened"), None)
    timeout_s = opened.get("timeout_s") if opened is not None else None
    if opened is None or not isinstance(timeout_s, int | float):
        return mine
    deadline_us = int(opened["t_us"]) + round(timeout_s * 1e6)
    closed = next((e for e in mine if e["event"] == "scope_closed"), None)
    if closed is None or int(closed["t_us"]) < deadline_us:
        return mine
    mark = {
        "t_us": deadline_us,
        "event": "deadline_passed",
        "session": opened.get("session"),
        "request": request_id,
        "task": "trio clock",
        "timeout_s": timeout_s,
    }
    # Before anything at the same µs: what happens then happens because of it.
    at = next(i for i, e in enumerate(mine) if int(e["t_us"]) >= deadline_us)
    return [*mine[:at], mark, *mine[at:]]


def narrate_events(events: Sequence[TraceEvent], *, zero_us: int) -> list[str]:
    """Events as aligned lines ``time lane what``, runs of STREAM events folded into one."""
    lines = []
    i = 0
    while i < len(events):
        e = events[i]
        j = i + 1
        if e["event"] in _FOLDED:
            while (
                j < len(events)
                and events[j]["event"] == e["event"]
                and events[j]["request"] == e["request"]
            ):
                j += 1
        if j - i > 1:
            what = (
                f"STREAM {e['request']} seq={e.get('seq')}..{events[j - 1].get('seq')} "
                f"{e['event'].removeprefix('stream_')}"
            )
        else:
            what = describe(e)
        lines.append(f"{_offset(int(e['t_us']) - zero_us):>12}  {e['task']:<14}  {what}")
        i = j
    return lines


def narrate(story: InterruptStory) -> str:
    """The story as text: a headline per milestone, then every event."""
    target = f"request {story.target}" if story.target else "all requests"
    head = [
        f"INTERRUPT {story.msg_id} ({story.reason}) for {target}, session {story.session}",
        f"cut: {', '.join(story.cut) if story.cut else 'nothing (no running request matched)'}",
        "",
    ]
    marks = [f"  {label:<36} {_offset(us):>12}" for label, us, _ in story.milestones()]
    if marks:
        head += ["after the INTERRUPT was read:", *marks, ""]
    head.append(f"{'t (µs)':>12}  {'task':<14}  event")
    return "\n".join(head + narrate_events(story.events, zero_us=story.read_us))


def _offset(us: int) -> str:
    return f"{us:+,d} µs" if us else "0 µs"
