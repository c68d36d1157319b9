"""Trace mode: one JSON object per cancellation event, to watch an interrupt travel.

Off by default, and then every hook is an empty method (``scripts/bench_trace.py``
measures what that costs). ``docs/cancellation.md`` describes the events.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import trio

from trio_agent.observability.facts import FrameFacts, RequestFacts
from trio_agent.observability.logs import clip_value
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import InterruptMessage

if TYPE_CHECKING:
    from types import TracebackType

    from trio_agent.protocol.messages import ClientMessage, ErrorInfo

TraceEvent = dict[str, Any]

#: The ``task`` of what a session's reader does.
READER = "reader"
#: The ``task`` of what a session's writer does.
WRITER = "writer"
_REQUEST_PREFIX = "request "


def request_task_label(request_id: str) -> str:
    """The ``task`` of what the task running request ``request_id`` does: ``request <id>``."""
    return f"{_REQUEST_PREFIX}{request_id}"


def request_of_task_label(label: str) -> str | None:
    """The request id in a :func:`request_task_label`, or ``None`` for any other label."""
    return label.removeprefix(_REQUEST_PREFIX) if label.startswith(_REQUEST_PREFIX) else None


#: What the task that runs a request can find its trace by (see :func:`shielded_cleanup`).
_request_trace: ContextVar[tuple[SessionTrace, RequestFacts] | None] = ContextVar(
    "trio_agent_request_trace", default=None
)


class SessionTrace:
    """The hooks a session's events call, one per event. This class records nothing.

    It is what a session holds when tracing is off, so every hook here must stay
    an empty method. :class:`RecordingSessionTrace` gives them a body.
    """

    __slots__ = ()

    #: Whether the hooks record anything (a session never needs to ask).
    enabled = False

    # -- cluster mode ---------------------------------------------------------------
    def cluster(self, event: str, request: str | None, fields: dict[str, Any]) -> None:
        """A fact of cluster mode (``docs/cluster.md``), recorded as ``cluster_<event>``."""

    # -- any task of the session --------------------------------------------------
    def task_started(self, label: str) -> None:
        """The calling task is the session's ``label`` task (:data:`READER`,
        :data:`WRITER`, a :func:`request_task_label`): its events carry that label."""

    def task_ended(self) -> None:
        """The calling task is done with its label (a request's task, as it ends)."""

    # -- the reader ---------------------------------------------------------------
    def session_opened(self) -> None:
        """The session starts (its reader has said so with :meth:`task_started`)."""

    def frame_read(self, message: ClientMessage) -> None:
        """A client frame was read and parsed (an INTERRUPT is recorded as ``interrupt_read``)."""

    def scope_cancelled(self, record: RequestFacts, discarded: int) -> None:
        """``record``'s scope was cancelled, and then its ``discarded`` queued STREAM frames dropped."""

    def priority_queued(self, frame: FrameFacts) -> None:
        """A frame went onto the priority lane (an ACK, an interrupted DONE, ...)."""

    def nursery_cancelled(self, reason: str) -> None:
        """The session nursery was cancelled: the session is closing."""

    def cleanup_started(
        self, what: str, timeout_s: float, record: RequestFacts | None = None
    ) -> None:
        """A bounded, shielded cleanup began."""

    def cleanup_ended(self, what: str, timed_out: bool, record: RequestFacts | None = None) -> None:
        """That cleanup finished, or ran out of time."""

    def session_closed(self, reason: str) -> None:
        """The session is over."""

    # -- a request task -----------------------------------------------------------
    def scope_opened(self, record: RequestFacts, timeout_s: float) -> None:
        """The request's task entered its cancel scope; the agent runs next."""

    def stream_queued(self, record: RequestFacts, seq: int) -> None:
        """The agent's ``stream.send`` queued STREAM ``seq``."""

    def late_send(self, record: RequestFacts) -> None:
        """The agent called ``stream.send`` after its request had ended."""

    def cancel_delivered(self, record: RequestFacts, cancelled: trio.Cancelled) -> None:
        """``trio.Cancelled`` came out of the agent."""

    def done_queued(self, record: RequestFacts) -> None:
        """A DONE went onto the stream lane, behind the request's STREAM frames."""

    def scope_closed(self, record: RequestFacts, error: ErrorInfo | None) -> None:
        """The request's scope exited (``error``: what the agent raised, if anything)."""

    # -- the writer ---------------------------------------------------------------
    def frame_written(self, frame: FrameFacts) -> None:
        """The writer sent ``frame`` on the socket (called before it counts the frame)."""


#: The trace of every session while tracing is off.
_OFF = SessionTrace()


class Tracer:
    """Gives each session its :class:`SessionTrace`. This one traces nothing."""

    enabled = False

    def session(self, session_id: str) -> SessionTrace:
        return _OFF

    def flush(self) -> None:
        """Push buffered events to where they go."""

    def close(self) -> None:
        """Flush and release what the tracer holds."""


#: The tracer of a server with tracing off.
NO_TRACE = Tracer()


class RecordingTracer(Tracer):
    """A tracer that hands every event, as a dict, to ``sink``."""

    enabled = True

    def __init__(self, sink: Callable[[TraceEvent], None]) -> None:
        self._sink = sink

    def session(self, session_id: str) -> SessionTrace:
        return RecordingSessionTrace(session_id, self._sink, self)


class MemoryTracer(RecordingTracer):
    """Keeps the events in :attr:`events` (tests, ``trio-agent demo``, ``check_agent``)."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        super().__init__(self.events.append)


class JsonLinesTracer(RecordingTracer):
    """Appends one JSON line per event to ``path``.

    The file is opened on the first event and written through Python's buffer;
    the buffer is flushed whenever a session closes and when the server stops,
    so a finished session is always on disk. Writes are synchronous, like
    logging: tracing is a diagnostic mode, and its cost is measured.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        super().__init__(self._write)

    def _write(self, event: TraceEvent) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(_encode(event) + "\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def tracer_for(path: str) -> Tracer:
    """The tracer a server setting asks for: :data:`NO_TRACE` for ``""``, else JSON lines."""
    return JsonLinesTracer(path) if path else NO_TRACE


#: Built once: json.dumps() with any option builds a new encoder on every call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class RecordingSessionTrace(SessionTrace):
    """The hooks of one session, each turned into an event for the tracer's sink."""

    __slots__ = ("_session_id", "_sink", "_tasks", "_tracer")

    enabled = True

    def __init__(self, session_id: str, sink: Callable[[TraceEvent], None], tracer: Tracer) -> None:
        self._session_id = session_id
        self._sink = sink
        self._tracer = tracer
        #: The session's own tasks, by Task object: what :meth:`task_started` named.
        self._tasks: dict[trio.lowlevel.Task, str] = {}

    # -- plumbing ------------------------------------------------------------------

    def _emit(self, event: str, request: str | None, **fields: Any) -> None:
        # Client strings (ids, reasons) are cut as in the log (clip_value): a trace
        # line stays a few hundred bytes whatever a frame carried.
        self._sink(
            {
                "t_us": round(trio.current_time() * 1e6),
                "event": event,
                "session": self._session_id,
                "request": clip_value(request),
                "task": clip_value(self._label(trio.lowlevel.current_task())),
                **{key: clip_value(value) for key, value in fields.items()},
            }
        )

    def cluster(self, event: str, request: str | None, fields: dict[str, Any]) -> None:
        self._emit(f"cluster_{event}", request, **fields)

    def _label(self, task: trio.lowlevel.Task) -> str:
        label = self._tasks.get(task)
        return task.name if label is None else label

    def _source_task_label(self, task_repr: str | None) -> str | None:
        """Turn ``Cancelled.source_task`` (a task's repr) into a task label.

        Trio gives the task as its repr, so it is compared with the repr of the
        session's own tasks, and then of every live task under the root.
        """
        if task_repr is None:
            return None
        for task, label in self._tasks.items():
            if repr(task) == task_repr:
                return label
        live = _live_task(task_repr)
        return task_repr if live is None else live.name

    # -- any task of the session ---------------------------------------------------

    def task_started(self, label: str) -> None:
        self._tasks[trio.lowlevel.current_task()] = label

    def task_ended(self) -> None:
        self._tasks.pop(trio.lowlevel.current_task(), None)

    # -- the reader ----------------------------------------------------------------

    def session_opened(self) -> None:
        self._emit("session_opened", None)

    def frame_read(self, message: ClientMessage) -> None:
        if isinstance(message, InterruptMessage):
            self._emit(
                "interrupt_read",
                message.request_id,
                msg_id=message.msg_id,
                reason=message.payload.reason,
            )
        else:
            self._emit(
                "frame_read", message.request_id, msg_type=message.msg_type, msg_id=message.msg_id
            )

    def scope_cancelled(self, record: RequestFacts, discarded: int) -> None:
        self._emit(
            "scope_cancelled",
            record.request_id,
            by=record.cancelled_by,
            status=_text(record.status),
            reason=record.reason,
        )
        if discarded:
            self._emit(
                "stream_discarded",
                record.request_id,
                count=discarded,
                first_seq=record.frames_queued - discarded,
                last_seq=record.frames_queued - 1,
            )

    def priority_queued(self, frame: FrameFacts) -> None:
        if frame.kind is FrameKind.DONE:
            assert frame.record is not None
            self._emit(
                "done_queued",
                frame.record.request_id,
                lane="priority",
                status=_text(frame.record.status),
            )
            return
        control = _control_fields(frame)
        if control.get("msg_type") == "INTERRUPT_ACK":
            self._emit(
                "ack_queued",
                control.get("request_id"),
                ref=control.get("ref"),
                interrupted=control.get("interrupted"),
            )
        else:
            self._emit(
                "control_queued", control.get("request_id"), msg_type=control.get("msg_type")
            )

    def nursery_cancelled(self, reason: str) -> None:
        self._emit("nursery_cancelled", None, reason=reason)

    def cleanup_started(
        self, what: str, timeout_s: float, record: RequestFacts | None = None
    ) -> None:
        self._emit(
            "cleanup_started", record.request_id if record else None, what=what, timeout_s=timeout_s
        )

    def cleanup_ended(self, what: str, timed_out: bool, record: RequestFacts | None = None) -> None:
        self._emit(
            "cleanup_ended", record.request_id if record else None, what=what, timed_out=timed_out
        )

    def session_closed(self, reason: str) -> None:
        self._emit("session_closed", None, reason=reason)
        self._tracer.flush()

    # -- a request task ------------------------------------------------------------

    def scope_opened(self, record: RequestFacts, timeout_s: float) -> None:
        # Each Trio task runs in its own copy of the context, so this only tells
        # the request's task (and tasks it starts) which trace it belongs to.
        _request_trace.set((self, record))
        self._emit("scope_opened", record.request_id, agent=record.agent, timeout_s=timeout_s)

    def stream_queued(self, record: RequestFacts, seq: int) -> None:
        self._emit("stream_queued", record.request_id, seq=seq)

    def late_send(self, record: RequestFacts) -> None:
        self._emit("late_send", record.request_id, status=_text(record.status))

    def cancel_delivered(self, record: RequestFacts, cancelled: trio.Cancelled) -> None:
        checkpoint, stack = _where_raised(cancelled.__traceback__)
        self._emit(
            "cancel_delivered",
            record.request_id,
            source=cancelled.source,
            reason=cancelled.reason,
            source_task=self._source_task_label(cancelled.source_task),
            checkpoint=checkpoint,
            stack=stack,
        )

    def done_queued(self, record: RequestFacts) -> None:
        self._emit("done_queued", record.request_id, lane="stream", status=_text(record.status))

    def scope_closed(self, record: RequestFacts, error: ErrorInfo | None) -> None:
        scope = record.scope
        if scope.cancelled_caught:
            outcome = "cancelled"  # Cancelled came out of the agent; this scope caught it
        elif error is not None:
            outcome = "raised"
        elif isinstance(sys.exc_info()[1], trio.Cancelled):
            outcome = "cancelled from outside"  # the session is closing around it
        elif scope.cancel_called:
            outcome = "returned after cancel"  # finished first, or swallowed Cancelled
        else:
            outcome = "returned"
        self._emit(
            "scope_closed",
            record.request_id,
            outcome=outcome,
            status=_text(record.status),
            cancel_called=scope.cancel_called,
            error=None if error is None else f"{error.code}: {error.message}",
        )

    # -- the writer ----------------------------------------------------------------

    def frame_written(self, frame: FrameFacts) -> None:
        record = frame.record
        if frame.kind is FrameKind.STREAM:
            assert record is not None
            # Called before the session counts this frame: a request's STREAM
            # frames are written in order (only a queued tail is ever discarded),
            # so the count so far is this frame's seq.
            self._emit("stream_written", record.request_id, seq=record.frames_written)
        elif frame.kind is FrameKind.AUDIO:
            # Not traced one by one: a spoken reply writes fifty a second, and the
            # words' STREAM frames already mark where the reply is.
            return
        elif frame.kind is FrameKind.DONE:
            assert record is not None
            self._emit(
                "done_written",
                record.request_id,
                status=_text(record.status),
                interrupted=record.interrupted,
                frames=record.frames_written,
            )
        else:
            control = _control_fields(frame)
            if control.get("msg_type") == "INTERRUPT_ACK" and frame.read_at is not None:
                latency = round((trio.current_time() - frame.read_at) * 1e6)
                self._emit(
                    "ack_written",
                    control.get("request_id"),
                    ref=control.get("ref"),
                    latency_us=latency,
                )
            else:
                self._emit(
                    "control_written", control.get("request_id"), msg_type=control.get("msg_type")
                )


def current_request_trace() -> tuple[SessionTrace, RequestFacts] | None:
    """The trace and request of the calling task, if it runs a traced request.

    Each Trio task runs in its own copy of the context, so this is set only in a
    request's task (and in tasks it starts): :func:`~trio_agent.agents.shielded_cleanup`
    uses it to put an agent's cleanup on its request's lane.
    """
    return _request_trace.get()


def _live_task(task_repr: str) -> trio.lowlevel.Task | None:
    """The live Trio task whose repr is ``task_repr``, found from the root task down."""
    root = trio.lowlevel.current_root_task()
    pending = [] if root is None else [root]
    while pending:
        task = pending.pop()
        if repr(task) == task_repr:
            return task
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _control_fields(frame: FrameFacts) -> dict[str, Any]:
    """msg_type, ref, request_id (and an ACK's cut ids) of an encoded control frame."""
    if frame.data is None:
        return {}
    data = json.loads(frame.data)
    fields = {k: data.get(k) for k in ("msg_type", "ref", "request_id")}
    if data.get("msg_type") == "INTERRUPT_ACK":
        fields["interrupted"] = (data.get("payload") or {}).get("interrupted")
    return fields


def _is_library(module: str) -> bool:
    return module in ("trio", "outcome") or module.startswith(("trio.", "outcome."))


def _where_raised(tb: TracebackType | None) -> tuple[str | None, list[str]]:
    """Where a ``Cancelled`` was raised: the Trio call it came out of, and our frames.

    Returns the qualified name of the outermost Trio function on the innermost
    stretch of Trio frames (``sleep``, ``checkpoint``, ``ParkingLot.park``...) and
    the frames above it that are not Trio's, innermost last, as ``file:line in
    function``. The first of those is the request task's own frame and is left out.
    """
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    checkpoint = None
    stack = []
    for frame, lineno in frames:
        if _is_library(frame.f_globals.get("__name__", "")):
            if checkpoint is None:
                checkpoint = frame.f_code.co_qualname
            continue
        checkpoint = None
        stack.append(f"{Path(frame.f_code.co_filename).name}:{lineno} in {frame.f_code.co_name}")
    return checkpoint, stack[1:][-4:]
