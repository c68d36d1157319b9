"""The writer: the task of a session that sends on its socket.

It takes frames from the lanes (:mod:`trio_agent.server.lanes`), priority first,
renders each DONE as it is about to send it, and with a
:class:`~trio_agent.server.cork.CorkableStream` sends them in batches. While it
sleeps with nothing queued, a frame pushed into the empty lanes is written by the
task that pushed it, at once, under the same rules (:meth:`Writer.run` says
exactly who may write when). What a
batch is and why it ends where it does: :meth:`Writer.run`, and
``docs/architecture.md``; what a client can count on: ``docs/protocol.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

import trio
from trio_websocket import CloseReason, ConnectionClosed

from trio_agent.observability.events import SessionEvents
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.framing import websocket_frame
from trio_agent.protocol.messages import CloseCode, DoneMessage, DonePayload, encode, now_ms
from trio_agent.server.cork import CorkableStream
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.message_ids import MessageIds
from trio_agent.server.registry import RequestRegistry
from trio_agent.server.session_end import SessionEnd, close_is_resumable

#: An AUDIO chunk, or a spoken reply's word, pushed sooner than this after the
#: connection's last write is not written by its producer: it is queued, and the
#: writer waits for company to send it in a batch, as for a busy writer. The speech
#: stage queues a group of chunks and words at once, well inside this window, and a
#: write per frame would cost it (and its client) a system call each; real-time
#: audio paced by its timer is far outside it. A text reply's STREAM frame needs no
#: window: its request's stream knows whether it came straight after the previous
#: send (``Outbound.flowing``, a reply in full flow, batched) or after a wait (its
#: upstream's next token, a pacing timer: written at once). Control frames, DONEs
#: and a reply's first frame never wait for company.
COMPANY_WINDOW_S: Final = 0.002


class MessageSink(Protocol):
    """Where a writer sends: a :class:`trio_websocket.WebSocketConnection`, or, for a
    session handed to another node, nothing but the store (``server/handoff.py``)."""

    @property
    def closed(self) -> CloseReason | None: ...

    async def send_message(self, message: str | bytes) -> None: ...


class _Nowhere:
    """The socket of a session handed to another node: its frames go to the store
    only (the writer's ``on_written`` mirrors each one), so sending is nothing."""

    closed = None

    async def send_message(self, message: str | bytes) -> None:
        return None


#: Where a session handed to another node writes (``Session.move_to``).
NOWHERE: MessageSink = _Nowhere()


class Writer:
    """Sends a session's frames; :meth:`run` is its task.

    :param ws: the connection; nothing else sends on it (but a producer writing
        through :meth:`_write_directly` while this writer sleeps, see :meth:`run`).
    :param session_id: the session's id, carried by every DONE.
    :param lanes: where the frames wait.
    :param registry: told when a DONE is on the wire, which frees its request id.
    :param msg_ids: the session's message ids (a DONE gets one as it is rendered).
    :param events: what the session tells.
    :param batch_frames: the most frames in one batch (``1``: no batches).
    :param cork: the stream under ``ws``, if it is a :class:`CorkableStream`.
    :param end_session: how the writer ends its session (or only its connection,
        when the session may be resumed) when it cannot write.
    :param on_written: told each frame as it counts as written, with its text (the
        session's replay buffer keeps it).
    """

    def __init__(
        self,
        ws: MessageSink,
        *,
        session_id: str,
        lanes: OutboundLanes,
        registry: RequestRegistry,
        msg_ids: MessageIds,
        events: SessionEvents,
        batch_frames: int,
        cork: CorkableStream | None,
        end_session: Callable[[SessionEnd], None],
        on_written: Callable[[Outbound, str | bytes], None] | None = None,
    ) -> None:
        self._ws = ws
        self._session_id = session_id
        self._lanes = lanes
        self._registry = registry
        self._msg_ids = msg_ids
        self._events = events
        self._batch_frames = batch_frames
        self._cork = cork if batch_frames > 1 else None
        self._end_session = end_session
        self._on_written = on_written
        #: The frames of the batch under way: counted as written, not all on the
        #: socket yet. Both paths to the socket add to it (see :meth:`run`).
        self._batch: list[tuple[Outbound, str | bytes]] = []
        #: A direct write left bytes under the cork, for the writer to flush.
        self._flush_owed = False
        #: What went wrong in a direct write's bookkeeping, for the writer to raise.
        self._direct_failure: Exception | None = None
        #: When the last batch reached the socket, by either path (``trio.current_time``).
        self._last_write_at = -COMPANY_WINDOW_S

    async def run(self) -> None:
        """Take frames from the lanes, priority first, and send them.

        **Who writes on the socket.** This task, or the task that pushed a frame
        into empty lanes while this task sleeps, one at a time under the cork's
        lock: while the writer is parked in
        :meth:`~trio_agent.server.lanes.OutboundLanes.next_frame` with nothing in
        hand and no batch, a frame pushed into both empty lanes is written by the
        pushing task itself, synchronously inside ``push_*``
        (:meth:`_write_directly`: one non-blocking socket write, so not a
        checkpoint and never cancelled halfway), when nothing is kept under the
        cork and no send holds its lock. What the kernel does not take stays under
        the cork and this task is woken to flush it before it takes anything else,
        so the order on the wire is the order of the pushes; the priority lane is
        still drained first, because it is empty. A frame pushed while the writer is
        busy, or while anything is queued or kept, is queued for this task, and so
        is a STREAM frame its agent sent straight after the previous one
        (``Outbound.flowing``), or an AUDIO chunk or a spoken word pushed within
        :data:`COMPANY_WINDOW_S` of the last write: a stream in full flow is sent
        in batches. Both paths count a frame the same way (:meth:`_count_written`,
        :meth:`_end_batch`), and a broken socket ends the session here, in this
        task, on either path.

        **Batches.** With a :class:`~trio_agent.server.cork.CorkableStream` under the
        connection, the writer frames its messages itself
        (:mod:`trio_agent.protocol.framing`) and the frames it takes one after
        another leave in one socket write: a *batch*.
        A batch ends when it holds ``batch_frames``, right after any frame that is
        not a STREAM or AUDIO frame (so an INTERRUPT_ACK is never held back),
        right after the first STREAM frame of a request (so a new reply's first
        words are not either) unless more frames are queued already (then they
        join the batch at no wait: the cut request's DONE leaves with its ACK),
        and when the lanes are empty and stay so for one
        turn of the producers (a checkpoint, or two: see the loop). Framing and
        keeping do no I/O, so those turns are the writer's only schedule points
        before the flush, and an ACK queued meanwhile is the next frame taken,
        which ends the batch. A STREAM frame counts as written once it is in the
        batch: the batch reaches the socket whole and in order, or the connection
        is gone, so a DONE counts exactly the STREAM frames ahead of it on the wire.

        Returns when the connection is gone (having ended the session); cancelled
        with the session nursery.
        """
        self._events.writer_started()
        lanes = self._lanes
        ws = self._ws
        events = self._events
        most = self._batch_frames
        cork = self._cork
        direct = self._write_directly if cork is not None and cork.writes_now else None
        #: A frame taken from the lanes whose write has not finished. If the write
        #: fails or is cancelled, it may or may not have reached the client: it is
        #: counted as written (``finally``), so the replay buffer holds it and a
        #: resume sends it again rather than leave a hole in its request's ``seq``.
        in_hand: tuple[Outbound, str | bytes] | None = None
        #: The batch holds a frame that must not wait (it is flushed, not held).
        urgent = False
        try:
            while True:
                frame = await lanes.next_frame(None if self._batch else direct)
                if frame is None:
                    # A direct write left bytes under the cork (the kernel took part
                    # of them), or its bookkeeping failed: first things first.
                    if self._direct_failure is not None:
                        raise self._direct_failure
                    assert cork is not None
                    await cork.flush()
                    self._end_batch()
                    continue
                text = frame.data if frame.data is not None else self._render_done(frame)
                in_hand = (frame, text)
                if frame.kind is FrameKind.DONE:
                    # Before the write: a client that has the DONE can count on it.
                    self._report_done(frame)
                if cork is None:
                    await ws.send_message(text)
                elif ws.closed is not None:
                    # As send_message would: nothing follows a close frame.
                    raise ConnectionClosed(ws.closed)
                else:
                    cork.keep(websocket_frame(text))
                # In a batch, a frame counts as written from here on (see above).
                in_hand = None
                batch = self._batch
                first = self._count_written(frame, text)
                batch.append((frame, text))
                urgent = (
                    urgent
                    or first
                    or self._flush_owed
                    or frame.kind not in (FrameKind.STREAM, FrameKind.AUDIO)
                )
                ends_batch = cork is None or len(batch) >= most
                if not ends_batch and urgent:
                    # A batch holding a frame that must not wait (an ACK, a DONE,
                    # a reply's first words) ends as soon as nothing more is
                    # queued right now: taking a queued frame needs no await, so
                    # it joins the batch and leaves in the same write (an ACK and
                    # the cut request's DONE behind it, at once), never later.
                    ends_batch = not lanes.queued
                elif not ends_batch and not lanes.queued:
                    # Give the producers that are ready one turn to add to the
                    # batch (an agent streaming flat out queues one frame per
                    # turn); if none does, the batch is complete. One that is
                    # ready now may run after the writer in the next scheduler
                    # batch (Trio runs a batch in either order), so a second
                    # checkpoint when the first found nothing: then every task
                    # that was ready has had its turn.
                    await trio.lowlevel.checkpoint()
                    if not lanes.queued:
                        await trio.lowlevel.checkpoint()
                    ends_batch = not lanes.queued
                if ends_batch:
                    if cork is not None:
                        await cork.flush()
                    self._end_batch()
                    urgent = False
        except ConnectionClosed as closed:
            # A client that closed with 1000 ended its session on purpose; a broken
            # connection may be resumed (v1.2, close_is_resumable).
            code = closed.reason.code if closed.reason is not None else None
            self._end_session(
                SessionEnd(
                    f"connection closed while writing (code {code})",
                    resumable=close_is_resumable(code),
                )
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # (A flush raises the stream's own errors: trio-websocket only sees the cork.)
            self._end_session(SessionEnd("connection closed while writing", resumable=True))
        except Exception as exc:
            events.writer_failed(exc)
            self._end_session(SessionEnd("internal error in the writer", CloseCode.INTERNAL_ERROR))
        finally:
            if in_hand is not None and self._on_written is not None:
                # Only when the session may be resumed does it matter (a replay).
                self._count_written(*in_hand)
                self._batch.append(in_hand)
            batch, self._batch = self._batch, []
            if batch:
                self._batch_written(batch)
            lanes.writer_gone()

    def _write_directly(self, frame: Outbound) -> bool:
        """Write ``frame`` from the task that pushed it; return ``False`` to have it queued.

        Called by the lanes inside ``push_*`` (synchronously, in the producer's
        task), only while this writer is parked in ``next_frame`` with nothing in
        hand and no batch, and both lanes are empty (see :meth:`run`). It declines
        when the cork keeps bytes or a send holds its lock (trio-websocket's pong or
        close frame), when the connection is closing (the writer raises
        ``ConnectionClosed`` for the queued frame, as for any other), and when the
        frame cannot be rendered (the writer meets the same error and ends the
        session as it does).

        Cancellation: nothing here is a schedule point (rendering, one
        non-blocking write, counting), so a producer's cancelled scope cannot cut
        it halfway, and no other task runs in the middle of it. Errors never reach
        the producer: a broken socket leaves the frame under the cork, and the
        writer, woken to flush it, meets the error and ends the session; a failure
        of the bookkeeping is handed to the writer to raise.
        """
        cork = self._cork
        assert cork is not None
        if not cork.can_write_now or self._ws.closed is not None or self._flush_owed:
            return False
        kind = frame.kind
        if frame.flowing or (
            _spoken(frame) and trio.current_time() - self._last_write_at < COMPANY_WINDOW_S
        ):
            return False  # a stream in full flow: the writer batches it
        try:
            text = frame.data if frame.data is not None else self._render_done(frame)
            data = websocket_frame(text)
        except Exception:
            return False
        if kind is FrameKind.DONE:
            # Before the write, as on the writer's path.
            self._report_done(frame)
        try:
            complete = cork.write_now(data)
        except Exception as exc:  # (a broken socket is not one: write_now keeps the bytes)
            self._direct_failure = exc
            complete = False
        try:
            # From here on the frame is written, or kept under the cork ahead of
            # everything else: it counts as written, as a frame in a batch does.
            self._count_written(frame, text)
            self._batch.append((frame, text))
            if complete:
                self._end_batch()
                return True
        except Exception as exc:
            self._direct_failure = exc
        self._flush_owed = True
        self._lanes.flush_wanted()
        return True

    def _end_batch(self) -> None:
        """The batch is on the socket (either path): free the writer and tell."""
        self._lanes.frame_written()
        batch, self._batch = self._batch, []
        self._flush_owed = False
        self._last_write_at = trio.current_time()
        self._batch_written(batch)

    def _count_written(self, frame: Outbound, text: str | bytes) -> bool:
        """Count ``frame`` as written; return whether it is its request's first STREAM frame."""
        self._events.frame_written(frame)
        if self._on_written is not None:
            self._on_written(frame, text)
        if frame.kind is FrameKind.STREAM:
            assert frame.record is not None
            frame.record.frames_written += 1
            return frame.record.frames_written == 1
        if frame.kind is FrameKind.AUDIO:
            assert frame.record is not None
            assert frame.record.speech is not None
            frame.record.speech.samples_written += frame.samples
        return False

    def _report_done(self, frame: Outbound) -> None:
        """Run the agent's ``on_done`` callbacks: the DONE is rendered, its count final."""
        record = frame.record
        assert record is not None
        for callback in record.done_callbacks:
            try:
                callback()
            except Exception as exc:
                self._events.on_done_failed(exc, record.request_id)

    def _batch_written(self, batch: list[tuple[Outbound, str | bytes]]) -> None:
        """Once a batch is on the socket: free the ids of its DONE requests, and tell."""
        for frame, _ in batch:
            if frame.kind is FrameKind.DONE:
                assert frame.record is not None
                self._registry.done_written(frame.record)
        self._events.batch_written(batch)

    def _render_done(self, frame: Outbound) -> str:
        """The DONE of ``frame.record``, as it stands now that it is about to be sent."""
        record = frame.record
        assert record is not None
        assert record.status is not None
        return encode(
            DoneMessage(
                msg_id=self._msg_ids.next_id(),
                session_id=self._session_id,
                request_id=record.request_id,
                ref=record.ref,
                ts=now_ms(),
                payload=DonePayload(
                    status=record.status,
                    interrupted=record.interrupted,
                    reason=record.reason,
                    frames=record.frames_written,
                    error=record.error,
                    cancelled_by=record.cancelled_by,
                    **record.done_fields,
                    **(
                        record.speech.done_fields(record.frames_written)
                        if record.speech is not None
                        else {}
                    ),
                ),
            )
        )


def _spoken(frame: Outbound) -> bool:
    """An AUDIO chunk, or a spoken reply's STREAM frame but its first: what the speech
    stage queues in groups with no wait between (see :data:`COMPANY_WINDOW_S`)."""
    if frame.kind is FrameKind.AUDIO:
        return True
    record = frame.record
    return (
        frame.kind is FrameKind.STREAM
        and record is not None
        and record.speech is not None
        and record.frames_written > 0
    )
