"""The :class:`~trio_agent.agents.ResponseStream` an agent writes its reply into.

Each ``send`` waits for room in the stream lane (backpressure, and the point where
an INTERRUPT lands in the agent), then queues one STREAM frame. It is also the
speech stage's sink (:class:`trio_agent.speech.stage.SpeechSink`). Why a send is
a checkpoint, and what happens to a send after the request ended:
``docs/cancellation.md``; the frames themselves: ``docs/protocol.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from trio_agent.agents import RequestOutcome, json_fields
from trio_agent.observability.events import SessionEvents
from trio_agent.protocol.audio import AudioFrameEncoder
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import DonePayload, StreamFrameEncoder, now_ms
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.registry import RequestPhase, RequestRecord
from trio_agent.speech.timeline import SpokenWord


def schedule_points(task: trio.lowlevel.Task) -> int:
    """How many times ``task`` has yielded to Trio's scheduler so far.

    Trio counts them on every task (``Task._schedule_points``, the count behind
    :func:`trio.testing.assert_checkpoints`); it is not public API, so a Trio
    without it reads as "never yielded": every send is a full checkpoint as
    before, and every frame after a reply's first counts as sent in full flow
    (the writer batches it rather than let its producer write it).
    ``tests/test_hot_path.py`` checks that Trio still counts.
    """
    points: int = getattr(task, "_schedule_points", -1)
    return points


class RequestStream:
    """The :class:`~trio_agent.agents.ResponseStream` a request's agent writes into.

    :param record: the request it streams for.
    :param session_id: the session's id, carried by every STREAM frame.
    :param lanes: where its frames queue.
    :param msg_ids: the session's message ids.
    :param events: what the session tells (each queued STREAM frame, a late send).
    """

    __slots__ = (
        "_encode",
        "_encode_audio",
        "_events",
        "_lanes",
        "_msg_ids",
        "_record",
        "_sent_at_point",
        "_sent_by",
    )

    def __init__(
        self,
        record: RequestRecord,
        *,
        session_id: str,
        lanes: OutboundLanes,
        msg_ids: MessageIds,
        events: SessionEvents,
    ) -> None:
        self._record = record
        self._lanes = lanes
        self._msg_ids = msg_ids
        self._events = events
        self._encode = StreamFrameEncoder(session_id, record.request_id)
        self._encode_audio = (
            AudioFrameEncoder(record.request_id, record.speech.sample_rate)
            if record.speech is not None
            else None
        )
        # Which task made the last send, and its count of schedule points then: a
        # send made after that task has yielded need not yield again (``_send``).
        self._sent_by: trio.lowlevel.Task | None = None
        self._sent_at_point = -1

    @property
    def request_id(self) -> str:
        return self._record.request_id

    @property
    def record(self) -> RequestRecord:
        return self._record

    async def send(self, delta: str) -> None:
        if not isinstance(delta, str):
            raise TypeError(f"a delta must be a str, not {type(delta).__name__}")
        await self._send(delta)

    async def send_word(self, delta: str, *, start_ms: float, end_ms: float) -> None:
        """A spoken word's STREAM frame, with its audio's ``start_ms``.

        A checkpoint only when it waits for room (see
        :class:`~trio_agent.speech.stage.SpeechSink`)."""
        speech = self._record.speech
        assert speech is not None
        await self._send(delta, start_ms, checkpoint=False)
        speech.words.append(SpokenWord(delta, start_ms, end_ms))

    async def send_audio(self, samples: bytes, *, start_sample: int) -> None:
        """One AUDIO chunk, budgeted in milliseconds in the stream lane.

        A checkpoint only when it waits for room (see
        :class:`~trio_agent.speech.stage.SpeechSink`)."""
        record = self._record
        speech = record.speech
        assert speech is not None
        n_samples = len(samples) // 2
        duration_ms = speech.ms(n_samples)
        if not self._lanes.has_audio_room(duration_ms):
            # Backpressure, and an interrupt point.
            await self._lanes.wait_for_audio_room(duration_ms)
        await self._check_sendable()
        assert self._encode_audio is not None
        audio_seq = speech.chunks_queued
        data = self._encode_audio(
            seq=audio_seq,
            start_ms=speech.ms(start_sample),
            duration_ms=duration_ms,
            samples=samples,
        )
        speech.chunks_queued += 1
        self._lanes.push_stream(
            Outbound(
                FrameKind.AUDIO,
                data,
                record,
                samples=n_samples,
                audio_ms=duration_ms,
                seq=audio_seq,
            )
        )

    async def _check_sendable(self) -> None:
        """Raise rather than queue for a request that is cancelled or has ended.

        Not a schedule point: called after the wait for room, or with room and no
        wait at all (the speech sink queues a group of chunks that way). A pending
        cancellation is delivered first: a scope cancelled while the phase is still
        RUNNING (its deadline, the session ending) queues nothing more.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        record = self._record
        if record.phase is not RequestPhase.RUNNING:
            # Cut while waiting for room, or woken from its last checkpoint and
            # cut before it ran: the discard that made the room woke us before the
            # cancellation could. The cancellation lands at the caller's next
            # checkpoint; this refuses to queue anything more.
            self._events.late_send(record)
            raise trio.ClosedResourceError(
                f"request {record.request_id} has ended ({record.status}); nothing more is sent for it"
            )

    async def _send(
        self, delta: str, start_ms: float | None = None, *, checkpoint: bool = True
    ) -> None:
        record = self._record
        task = trio.lowlevel.current_task()
        # A send is a schedule point only when its task has not passed one since its
        # previous send: a loop of sends still lets every other task run once per
        # delta, but an agent that awaited its upstream or a pacing timer in between
        # has already given them that turn, and a second pass of the scheduler per
        # frame would only cost time. So a reply's first frame, and every frame that
        # follows a real wait, is queued in the step that made it. A cancellation is
        # still delivered on every send (_check_sendable).
        waited = task is self._sent_by and schedule_points(task) != self._sent_at_point
        # Sent straight after the previous send: a reply in full flow, which the
        # writer batches (``Outbound.flowing``). A send from another task than the
        # last sender counts as one too: it yields, and its frame is batched.
        flowing = checkpoint and record.frames_queued > 0 and not waited
        if flowing or not self._lanes.has_stream_room(record):
            # Backpressure, and an interrupt point.
            await self._lanes.wait_for_stream_room(record)
        # Noted before anything below can raise: a loop of sends that fail (a
        # request that has ended, a delta that cannot be encoded) still yields on
        # each of them.
        self._sent_by = task
        self._sent_at_point = schedule_points(task)
        await self._check_sendable()
        # Render before counting: text that cannot be encoded (a lone surrogate)
        # raises here and uses no seq, even for an agent that catches the error.
        seq = record.frames_queued
        text = self._encode(
            msg_id=self._msg_ids.next_id(),
            ts=now_ms(),
            seq=seq,
            delta=delta,
            start_ms=start_ms,
        )
        record.frames_queued += 1
        # Told first: the push may write the frame at once (``Writer._write_directly``).
        self._events.stream_queued(record, seq)
        self._lanes.push_stream(Outbound(FrameKind.STREAM, text, record, seq=seq, flowing=flowing))
        if record.deltas is not None:
            record.deltas.append(delta)

    def add_done_fields(self, **fields: Any) -> None:
        self._record.done_fields.update(
            json_fields(fields, reserved=DonePayload.model_fields, where="DONE")
        )

    def defer_done(self) -> None:
        if self._record.phase is RequestPhase.RUNNING:
            self._record.defer_done = True

    def on_done(self, callback: Callable[[RequestOutcome], None]) -> None:
        record = self._record
        if record.frames_queued:
            raise RuntimeError("on_done() must be called before the first send()")
        if record.deltas is None:
            record.deltas = []

        def report() -> None:
            assert record.status is not None
            assert record.deltas is not None
            callback(
                RequestOutcome(
                    request_id=record.request_id,
                    status=record.status,
                    frames=record.frames_written,
                    delivered=tuple(record.deltas[: record.frames_written]),
                    heard_text=record.speech.heard_text(record.frames_written)
                    if record.speech is not None
                    else None,
                )
            )

        record.done_callbacks.append(report)
