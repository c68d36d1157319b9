"""A session's events: each fact said once by the server, written to every sink.

:class:`SessionEvents` writes each event to the log, the trace and the metrics;
its methods are synchronous, never a checkpoint, and the per-frame ones are empty
when untraced. ``docs/architecture.md`` explains the design.
A client chooses how often most events happen and what strings they carry, so
the log is bounded twice (cut values, and a :class:`LogBudget` per session); the
trace and the metrics see every event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

from trio_agent.observability.facts import FrameFacts, RequestFacts
from trio_agent.observability.logs import LOG_WINDOW_S, LogBudget, clip, clip_value
from trio_agent.observability.metrics import SessionMetrics, utf8_length
from trio_agent.observability.trace import (
    READER,
    WRITER,
    SessionTrace,
    request_task_label,
)
from trio_agent.protocol.constants import FrameKind

if TYPE_CHECKING:
    from trio_agent.protocol.messages import (
        ClientMessage,
        ErrorCode,
        ErrorInfo,
        InterruptMessage,
        ProtocolError,
    )

#: Log lines name the server's code that told the event, not this module.
_log = logger.opt(depth=1)

#: What the session waits for when it closes with request tasks still running.
_WAIT_FOR_REQUEST_TASKS = "wait for request tasks"


def session_events(trace: SessionTrace, metrics: SessionMetrics) -> SessionEvents:
    """The events of one session, composed once: traced only when ``trace`` records."""
    return (_TracedSessionEvents if trace.enabled else SessionEvents)(trace, metrics)


class SessionEvents:
    """What one session tells: one method per event, each sink written once.

    Build it with :func:`session_events`. This class does not trace the per-frame
    events (``stream_queued``, ``frame_written``): their methods are empty, so with
    tracing off a STREAM frame costs two calls that return at once.

    :param trace: the session's trace (the shared no-op one when tracing is off).
    :param metrics: where the session's events are counted.
    """

    __slots__ = ("_log_budget", "_metrics", "_trace")

    def __init__(self, trace: SessionTrace, metrics: SessionMetrics) -> None:
        self._trace = trace
        self._metrics = metrics
        self._log_budget = LogBudget()

    def _may_log(self, event: str) -> bool:
        """Whether this session may log one more line of ``event`` now (see the
        module docstring); tells first what the last window of it suppressed."""
        allowed, suppressed = self._log_budget.allow(event, trio.current_time())
        if suppressed:
            _suppressed(event, suppressed)
        return allowed

    # -- the session ----------------------------------------------------------------

    def session_opened(self, remote: str) -> None:
        """The session starts; the calling task is its reader."""
        self._trace.task_started(READER)
        _log.info("session opened", remote=remote)
        self._trace.session_opened()

    def waiting_for_request_tasks(self, grace_s: float) -> None:
        """The closing session waits, shielded, up to ``grace_s`` for its request tasks."""
        self._trace.cleanup_started(_WAIT_FOR_REQUEST_TASKS, grace_s)

    def waited_for_request_tasks(
        self, *, timed_out: bool, still_running: int, grace_s: float
    ) -> None:
        """That wait is over: every request task ended, or ``still_running`` did not."""
        self._trace.cleanup_ended(_WAIT_FOR_REQUEST_TASKS, timed_out)
        if timed_out:
            _log.warning(
                "an agent ignores cancellation; the session cannot finish until it returns",
                request_tasks=still_running,
                grace_s=grace_s,
            )

    def nursery_cancelled(self, reason: str) -> None:
        """The session nursery was cancelled: the session is closing."""
        self._trace.nursery_cancelled(reason)

    def session_closed(self, reason: str, code: int | None) -> None:
        """The session is over: ``reason``, and the close code sent (if any)."""
        for event, suppressed in self._log_budget.remaining():
            _suppressed(event, suppressed)
        _log.info("session closed", reason=clip(reason), code=code)
        self._trace.session_closed(reason)

    def connection_lost(self, reason: str, window_s: float) -> None:
        """The session's connection is gone; it waits ``window_s`` for a RESUME (v1.2)."""
        _log.info(
            "connection lost; the session waits for a resume",
            reason=clip(reason),
            window_s=window_s,
        )

    def session_resumed(self, replayed: int, gaps: Sequence[str]) -> None:
        """A connection resumed the session: ``replayed`` frames sent again, ``gaps`` ended."""
        _log.info("session resumed", replayed=replayed, gaps=[clip(g) for g in gaps[:8]])

    def cluster(self, event: str, request_id: str | None = None, **fields: Any) -> None:
        """A fact of cluster mode (a resume taken over from another node, an INTERRUPT
        sent to or received from one, a NODE_LOST claim), logged and traced once."""
        _log.info(f"cluster: {event.replace('_', ' ')}", request_id=request_id, **fields)
        self._trace.cluster(event, request_id, fields)

    def resume_refused(self, verdict: str) -> None:
        """A RESUME read on this (new) session was refused."""
        if self._may_log("resume refused"):
            _log.info("RESUME refused", verdict=verdict)

    # -- the reader -----------------------------------------------------------------

    def frame_read(self, message: ClientMessage) -> None:
        """A client frame was read and parsed."""
        self._trace.frame_read(message)

    def error_sent(self, code: ErrorCode) -> None:
        """An ERROR frame was queued for the client."""
        self._metrics.error_sent(code)

    def scope_cancelled(self, record: RequestFacts, discarded: int) -> None:
        """A request's scope was cancelled (INTERRUPT, shutdown), and then
        ``discarded`` of its queued STREAM frames dropped."""
        self._trace.scope_cancelled(record, discarded)

    def priority_queued(self, frame: FrameFacts) -> None:
        """A frame went onto the priority lane (an ACK, an interrupted DONE, ...)."""
        self._trace.priority_queued(frame)

    def frame_received(self, raw: str) -> None:
        """A text frame arrived, not yet parsed (logged at TRACE level, cut short)."""
        if self._may_log("frame read"):
            _log.trace("frame read", frame=clip(raw))

    def protocol_error(self, error: ProtocolError) -> None:
        """A client frame broke the protocol; an ERROR answers it."""
        if self._may_log("protocol error"):
            _log.debug("protocol error", code=str(error.code), detail=clip(error.message))

    def frame_handling_failed(self, exc: Exception) -> None:
        """A bug of ours raised while a frame was handled; the session goes on."""
        if self._may_log("internal error while handling a frame"):
            logger.opt(exception=exc, depth=1).error("internal error while handling a frame")

    def rate_limiting(self, rate_per_s: float) -> None:
        """A client went over the frame rate: its frames are refused for now."""
        if self._may_log("rate limiting a client"):
            _log.info("rate limiting a client", rate_per_s=rate_per_s)

    def flood_closed(self, refused: int) -> None:
        """A client kept flooding after ``refused`` refusals: its session closes."""
        _log.warning("closing a session that floods", refused=refused)

    def control_lane_overflowed(self, detail: str) -> None:
        """The priority lane is full (the client does not read): the session closes."""
        _log.warning("closing a session that does not read", detail=detail)

    def interrupt_processed(
        self, message: InterruptMessage, interrupted: Sequence[str], discarded: int
    ) -> None:
        """An INTERRUPT cut the requests ``interrupted``, dropping ``discarded``
        queued STREAM frames (their scopes are cancelled; the ACK is queued next)."""
        self._metrics.interrupt_processed(cut=len(interrupted), discarded=discarded)
        if self._may_log("interrupt processed"):
            _log.info(
                "interrupt processed",
                interrupt=clip(message.msg_id),
                target=clip(message.request_id or "*"),
                interrupted=clip_value(list(interrupted)),
                discarded_frames=discarded,
                reason=clip(message.payload.reason),
            )

    # -- a request's task -------------------------------------------------------------

    def request_started(self, record: RequestFacts, timeout_s: float) -> None:
        """The calling task runs ``record``: it has entered the request's scope."""
        self._trace.task_started(request_task_label(record.request_id))
        if self._may_log("request started"):
            _log.info("request started", agent=clip(record.agent), timeout_s=timeout_s)
        self._trace.scope_opened(record, timeout_s)

    def cancel_delivered(self, record: RequestFacts, cancelled: trio.Cancelled) -> None:
        """``trio.Cancelled`` came out of the agent: who cut it and why, from Trio."""
        if self._may_log("request cancelled"):
            _log.debug(
                "request cancelled",
                source=cancelled.source,
                cancel_reason=clip_value(cancelled.reason),
                source_task=cancelled.source_task,
            )
        self._trace.cancel_delivered(record, cancelled)

    def agent_raised(self, exc: Exception) -> None:
        """The agent failed: its request ends FAILED, the session goes on."""
        if self._may_log("agent raised"):
            logger.opt(exception=exc, depth=1).warning("agent raised")

    def stream_queued(self, record: RequestFacts, seq: int) -> None:
        """The agent's ``stream.send`` queued STREAM ``seq``. Traced only (per frame)."""

    def late_send(self, record: RequestFacts) -> None:
        """The agent sent after its request had ended: refused."""
        self._trace.late_send(record)

    def done_queued(self, record: RequestFacts) -> None:
        """A request's DONE went onto the stream lane, behind its STREAM frames."""
        self._trace.done_queued(record)

    def request_abandoned(self) -> None:
        """A request still running when the session stopped sending: no DONE for it."""
        if self._may_log("request abandoned"):
            _log.info("request abandoned", why="session closed")

    def scope_closed(self, record: RequestFacts, error: ErrorInfo | None) -> None:
        """The request's scope exited and its task is about to end."""
        self._trace.scope_closed(record, error)
        self._trace.task_ended()

    # -- the writer -------------------------------------------------------------------

    def writer_started(self) -> None:
        """The calling task is the session's writer."""
        self._trace.task_started(WRITER)

    def frame_written(self, frame: FrameFacts) -> None:
        """The writer counts ``frame`` as written. Traced only (per frame)."""

    def on_done_failed(self, exc: Exception, request_id: str) -> None:
        """An agent's ``on_done`` callback raised; the DONE is sent all the same."""
        if self._may_log("an on_done callback raised"):
            logger.opt(exception=exc, depth=1).error(
                "an on_done callback raised", request_id=clip(request_id)
            )

    def batch_written(self, batch: Sequence[tuple[FrameFacts, str | bytes]]) -> None:
        """A batch of frames, each with its encoded text, is on the socket.

        Counts every frame, and tells for each DONE that its request ended and for
        each INTERRUPT_ACK how long after its INTERRUPT was read it went out.
        """
        metrics = self._metrics
        #: Frames and bytes per kind, told to the metrics once per batch.
        tally: dict[FrameKind, list[int]] = {}
        for frame, text in batch:
            kind = frame.kind
            counts = tally.get(kind)
            if counts is None:
                tally[kind] = [1, utf8_length(text)]
            else:
                counts[0] += 1
                counts[1] += utf8_length(text)
            record = frame.record
            if kind is FrameKind.DONE:
                assert record is not None
                metrics.request_ended(record)
                if self._may_log("request ended"):
                    with logger.contextualize(request_id=clip(record.request_id)):
                        _log.info(
                            "request ended",
                            status=str(record.status),
                            frames=record.frames_written,
                            reason=clip_value(record.reason),
                        )
            elif frame.read_at is not None:
                latency_s = trio.current_time() - frame.read_at
                metrics.interrupt_acknowledged(latency_s)
                if self._may_log("interrupt acknowledged"):
                    _log.info("interrupt acknowledged", latency_us=round(latency_s * 1e6))
        for kind, (count, size) in tally.items():
            metrics.frames_written(kind, count, size)

    def writer_failed(self, exc: Exception) -> None:
        """A bug of ours stopped the writer: the session closes with 1011."""
        logger.opt(exception=exc, depth=1).error("writer failed")


def _suppressed(event: str, count: int) -> None:
    """One line for ``count`` lines of ``event`` a session did not log."""
    logger.opt(depth=2).info(
        "repeated log lines suppressed", event=event, suppressed=count, window_s=LOG_WINDOW_S
    )


class _TracedSessionEvents(SessionEvents):
    """The events of a traced session: the per-frame events are traced too."""

    __slots__ = ()

    def stream_queued(self, record: RequestFacts, seq: int) -> None:
        self._trace.stream_queued(record, seq)

    def frame_written(self, frame: FrameFacts) -> None:
        self._trace.frame_written(frame)
