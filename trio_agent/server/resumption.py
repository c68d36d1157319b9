"""What a session answers to a RESUME: RESUMED, then the replay (protocol v1.2).

:func:`resume_answer` decides, without an ``await``, every frame the resuming
connection gets before its live ones: RESUMED (``session_id`` the old id, ``ref``
the RESUME), then for each request the RESUME names the frames after the client's
``last_seq`` (and ``last_audio_seq``) in the order they were written, with the
request's DONE when it has ended. A request whose missing frames the replay buffer
no longer holds is ended with ``DONE{failed, RESUME_GAP, frames: N}``, ``N`` its
STREAM frames written: a running one is cut (its scope cancelled, its queued
frames dropped, its DONE queued on the priority lane, so it follows the replay);
one whose DONE is still queued has that DONE turned into the RESUME_GAP one; one
whose DONE was written gets a RESUME_GAP DONE in the replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import (
    CloseCode,
    DoneMessage,
    DonePayload,
    DoneStatus,
    ErrorCode,
    ErrorInfo,
    ErrorMessage,
    ErrorPayload,
    ResumedMessage,
    ResumedPayload,
    ResumeMessage,
    ResumeOffer,
    encode,
    now_ms,
)
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.registry import RequestPhase, RequestRecord, RequestRegistry
from trio_agent.server.replay import Gap, Replay, ReplayBuffer

__all__ = ["ResumeAnswer", "refuse_resume", "resume_answer"]

#: How long a refusal (the ERROR and the close frame) may take.
_REFUSAL_TIMEOUT_S = 1.0

_GAP_MESSAGE = "frames of this reply were no longer held when the session was resumed"


@dataclass(frozen=True)
class ResumeAnswer:
    """The frames to write before the live ones (RESUMED first), and what they say."""

    frames: list[str | bytes]
    requests: dict[str, Literal["running", "done"]]
    gaps: list[str]


def resume_answer(
    message: ResumeMessage,
    *,
    session_id: str,
    token: str,
    window_s: float,
    interrupts: dict[str, list[str]],
    registry: RequestRegistry,
    replay: ReplayBuffer,
    lanes: OutboundLanes,
    msg_ids: MessageIds,
    push_control: Callable[[Outbound], bool],
) -> ResumeAnswer:
    """Decide RESUMED and the replay; cut the requests with a gap. Synchronous."""
    payload = message.payload
    requests: dict[str, Literal["running", "done"]] = {}
    replayed: list[str | bytes] = []
    gaps: list[str] = []
    for request_id, last_seq in payload.last_seq.items():
        record = registry.get(request_id)
        outcome = replay.replay(request_id, last_seq, payload.last_audio_seq.get(request_id, -1))
        running = record is not None and record.phase is RequestPhase.RUNNING
        if isinstance(outcome, Replay) and (record is not None or outcome.ended):
            replayed.extend(outcome.frames)
            requests[request_id] = "running" if running else "done"
            continue
        # Frames the client lacks are gone (or the request is not known at all).
        gaps.append(request_id)
        requests[request_id] = "done"
        written = outcome.frames_written if isinstance(outcome, Gap) else 0
        # The client holds seq 0..last_seq: at least that many were written, even of a
        # request this session knows nothing of (in a cluster: one a node that then
        # stalled or died had not stored), so ``frames`` is never below what it holds.
        written = max(written, last_seq + 1)
        if record is not None:
            _end_with_gap(record, registry, lanes, push_control, running=running)
        else:
            replayed.append(_gap_done(request_id, written, session_id, msg_ids))
    for record in registry.running():
        requests.setdefault(record.request_id, "running")
    resumed = ResumedMessage(
        msg_id=msg_ids.next_id(),
        session_id=session_id,
        ref=message.msg_id,
        ts=now_ms(),
        payload=ResumedPayload(
            requests=requests,
            interrupts=interrupts,
            resume=ResumeOffer(token=token, window_s=window_s),
        ),
    )
    return ResumeAnswer([encode(resumed), *replayed], requests, gaps)


def _end_with_gap(
    record: RequestRecord,
    registry: RequestRegistry,
    lanes: OutboundLanes,
    push_control: Callable[[Outbound], bool],
    *,
    running: bool,
) -> None:
    """End a live request whose written frames cannot all be replayed.

    Its DONE says RESUME_GAP with ``frames`` = its STREAM frames written (the DONE
    is rendered when written, from the record). Its queued frames are dropped: after
    a gap, more words would only mislead.
    """
    error = ErrorInfo(code=ErrorCode.RESUME_GAP, message=_GAP_MESSAGE)
    if running:
        registry.end(record, DoneStatus.FAILED, reason="resume gap", error=error)
        record.scope.cancel(reason="RESUME_GAP: frames of this reply were evicted")
        lanes.discard(record)
        push_control(Outbound(FrameKind.DONE, record=record))
    else:
        # Its DONE is queued and not yet rendered: it becomes the RESUME_GAP one.
        record.status = DoneStatus.FAILED
        record.reason = "resume gap"
        record.error = error
        record.cancelled_by = None
        lanes.discard(record)


def _gap_done(request_id: str, frames: int, session_id: str, msg_ids: MessageIds) -> str:
    """The RESUME_GAP DONE of a request whose own DONE was written and then evicted
    (or that the session no longer knows: then ``frames`` is 0)."""
    return encode(
        DoneMessage(
            msg_id=msg_ids.next_id(),
            session_id=session_id,
            request_id=request_id,
            ts=now_ms(),
            payload=DonePayload(
                status=DoneStatus.FAILED,
                interrupted=False,
                reason="resume gap",
                frames=frames,
                error=ErrorInfo(code=ErrorCode.RESUME_GAP, message=_GAP_MESSAGE),
            ),
        )
    )


async def refuse_resume(
    ws: WebSocketConnection,
    *,
    session_id: str,
    msg_id: str,
    ref: str | None,
    code: ErrorCode,
    text: str,
) -> None:
    """Answer a RESUME with ERROR ``code`` and close with 1008; bounded (1 s) and
    shielded like any close: a refusal is owed even to a connection being cancelled."""
    error = ErrorMessage(
        msg_id=msg_id,
        session_id=session_id,
        ref=ref,
        ts=now_ms(),
        payload=ErrorPayload(code=code, message=text),
    )
    with trio.move_on_after(_REFUSAL_TIMEOUT_S, shield=True):
        try:
            await ws.send_message(encode(error))
            await ws.aclose(code=CloseCode.POLICY_VIOLATION, reason="resume refused")
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
