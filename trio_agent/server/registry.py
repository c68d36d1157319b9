"""The per-session book of requests: which are running, which have ended, who cut whom.

:class:`RequestRegistry` decides and the session carries the decision out; the first
terminal decision wins. docs/cancellation.md explains the phases and why.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from trio_agent.protocol.messages import DoneStatus, ErrorCode, ErrorInfo, TargetOutcome

if TYPE_CHECKING:
    from collections.abc import Callable

    import trio

    from trio_agent.speech.timeline import SpeechTimeline


class RequestPhase(Enum):
    RUNNING = "running"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(eq=False)
class RequestRecord:
    """Everything the session knows about one request.

    ``scope`` is the request's own :class:`trio.CancelScope`. The registry only
    stores it; cancelling it is the shell's job.
    """

    request_id: str
    agent: str
    scope: trio.CancelScope
    ref: str | None = None
    phase: RequestPhase = RequestPhase.RUNNING
    #: STREAM frames handed to the lanes so far; the next frame's ``seq``.
    frames_queued: int = 0
    #: STREAM frames that reached the socket: what DONE.frames reports.
    frames_written: int = 0
    status: DoneStatus | None = None
    reason: str | None = None
    error: ErrorInfo | None = None
    cancelled_by: str | None = None
    # What the agent asked of its DONE (see ResponseStream in trio_agent.agents):
    #: fields added to the DONE payload;
    done_fields: dict[str, Any] = field(default_factory=dict)
    #: that an interrupted request's DONE wait until the agent has returned;
    defer_done: bool = False
    #: the delta of every STREAM frame queued, kept only for ``done_callbacks``
    #: (the first ``frames_written`` of them are what the client received);
    deltas: list[str] | None = None
    #: called by the writer once the DONE is on the wire.
    done_callbacks: list[Callable[[], None]] = field(default_factory=list)
    #: A spoken reply's audio: queued, written, heard (``None``: a text reply).
    speech: SpeechTimeline | None = None
    #: In a cluster: the node that runs this request when it is not this one (its
    #: frames are relayed from the store; ``docs/cluster.md``).
    runs_on: str | None = None

    @property
    def interrupted(self) -> bool:
        return self.status is DoneStatus.INTERRUPTED


class AdmissionRefused(Exception):
    """A REQUEST the registry will not start; ``code`` is the ERROR code to send."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class InterruptDecision:
    """What one INTERRUPT does: the records it cuts, and why named targets were not cut."""

    cut: list[RequestRecord]
    targets: dict[str, TargetOutcome] = field(default_factory=dict)

    @property
    def interrupted_ids(self) -> list[str]:
        return [r.request_id for r in self.cut]


class RequestRegistry:
    """Running and recently ended requests of one session.

    :param max_running: how many requests may be RUNNING at once
        (``TOO_MANY_REQUESTS`` past that).
    :param finished_memory: how many ended ids to remember for ``already_done``.
    """

    def __init__(self, *, max_running: int, finished_memory: int = 512) -> None:
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self.max_running = max_running
        self._finished_memory = finished_memory
        #: RUNNING and ENDING records, in start order.
        self._live: dict[str, RequestRecord] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._running = 0

    # -- queries ---------------------------------------------------------------------

    @property
    def running_count(self) -> int:
        return self._running

    @property
    def live_count(self) -> int:
        """RUNNING plus ENDING: requests whose DONE is not on the wire yet."""
        return len(self._live)

    def get(self, request_id: str) -> RequestRecord | None:
        return self._live.get(request_id)

    def running(self) -> list[RequestRecord]:
        return [r for r in self._live.values() if r.phase is RequestPhase.RUNNING]

    def has_finished(self, request_id: str) -> bool:
        return request_id in self._finished

    # -- decisions -------------------------------------------------------------------

    def admit(
        self, request_id: str, *, agent: str, scope: trio.CancelScope, ref: str | None = None
    ) -> RequestRecord:
        """Register a new request, or raise :class:`AdmissionRefused`.

        An id is a duplicate while its request is RUNNING or ENDING; once its DONE
        is written the id may be used again.
        """
        if request_id in self._live:
            raise AdmissionRefused(
                ErrorCode.DUPLICATE_REQUEST_ID,
                f"request {request_id!r} is still running in this session",
            )
        if self._running >= self.max_running:
            raise AdmissionRefused(
                ErrorCode.TOO_MANY_REQUESTS,
                f"this session already runs {self._running} requests (the limit)",
            )
        record = RequestRecord(request_id=request_id, agent=agent, scope=scope, ref=ref)
        self._live[request_id] = record
        self._running += 1
        return record

    def interrupt(self, request_id: str | None, *, reason: str, msg_id: str) -> InterruptDecision:
        """Decide what an INTERRUPT cuts, and mark those requests ENDING as interrupted.

        With a ``request_id``, at most that request; with ``None``, every request
        RUNNING right now (and none admitted later). A request already ENDING is
        never cut a second time: two concurrent INTERRUPTs cannot both claim it.
        """
        if request_id is None:
            cut = self.running()
            targets: dict[str, TargetOutcome] = {}
        else:
            record = self._live.get(request_id)
            if record is not None and record.phase is RequestPhase.RUNNING:
                cut, targets = [record], {}
            elif record is not None or request_id in self._finished:
                cut, targets = [], {request_id: TargetOutcome.ALREADY_DONE}
            else:
                cut, targets = [], {request_id: TargetOutcome.UNKNOWN}
        for record in cut:
            self.end(record, DoneStatus.INTERRUPTED, reason=reason)
            record.cancelled_by = msg_id
        return InterruptDecision(cut=cut, targets=targets)

    def end_all(self, status: DoneStatus, *, reason: str) -> list[RequestRecord]:
        """End every RUNNING request with ``status`` (server shutdown); return them."""
        ended = self.running()
        for record in ended:
            self.end(record, status, reason=reason)
        return ended

    def end(
        self,
        record: RequestRecord,
        status: DoneStatus,
        *,
        reason: str | None = None,
        error: ErrorInfo | None = None,
    ) -> bool:
        """Decide the terminal status of ``record``; only the first decision counts.

        Returns ``True`` when this call decided it (the caller must then queue the
        one DONE), ``False`` when the request had already ended.
        """
        if record.phase is not RequestPhase.RUNNING:
            return False
        record.phase = RequestPhase.ENDING
        record.status = status
        record.reason = reason
        record.error = error
        self._running -= 1
        return True

    def done_written(self, record: RequestRecord) -> None:
        """The DONE of ``record`` reached the socket: free its id, remember it ended."""
        record.phase = RequestPhase.ENDED
        if self._live.get(record.request_id) is record:
            del self._live[record.request_id]
        self._finished[record.request_id] = None
        self._finished.move_to_end(record.request_id)
        while len(self._finished) > self._finished_memory:
            self._finished.popitem(last=False)
