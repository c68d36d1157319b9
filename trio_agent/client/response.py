"""What a request and an interrupt give back: :class:`Response`, :class:`InterruptHandle`
and :class:`AckInfo`.

They are thin Trio views on the client state (:mod:`trio_agent.client.state`): the
reader task updates the client state and wakes them; they only wait and read. What each
call waits for, and what cancelling it does, is in docs/client.md.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, Self

import trio

from trio_agent.client.errors import AckTimeout, ClientClosed, ServerError
from trio_agent.client.outbox import QueuedFrame
from trio_agent.client.state import AudioChunk, Chunk, DoneInfo, InterruptState, RequestState
from trio_agent.protocol.messages import (
    DEFAULT_INTERRUPT_REASON,
    ErrorInfo,
    InterruptAckPayload,
    TargetOutcome,
)

__all__ = ["AckInfo", "InterruptHandle", "Response"]


class _OwningClient(Protocol):
    """What a :class:`Response` and an :class:`InterruptHandle` use of the client that
    made them (an :class:`~trio_agent.client.connection.AgentClient`). Described here,
    so that this module does not import the one that imports it."""

    def _closed_error(self) -> ClientClosed: ...

    async def interrupt(
        self,
        request_id: str | None = None,
        *,
        reason: str = DEFAULT_INTERRUPT_REASON,
        played_ms: float | None = None,
    ) -> InterruptHandle: ...


@dataclass(frozen=True, slots=True)
class AckInfo:
    """What the INTERRUPT_ACK said, and what the client measured around it.

    ``interrupted`` are the requests the server cut; ``targets`` says why a named
    request was not cut (``unknown`` or ``already_done``). ``rtt_s`` runs from the
    moment the INTERRUPT was handed to the socket to the moment its ACK was read.
    ``stale_dropped`` counts the STREAM frames of the requests this interrupt cut
    locally that arrived after the cut and were dropped, up to the ACK. For a
    request the server cut, that count is final (nothing but its DONE follows the
    ACK); a request the server had already finished may still deliver frames later
    (see :attr:`Response.stale_dropped`).
    """

    interrupted: tuple[str, ...]
    interrupted_count: int
    reason: str
    targets: Mapping[str, TargetOutcome]
    rtt_s: float
    stale_dropped: int

    @classmethod
    def from_ack(cls, ack: InterruptAckPayload, *, rtt_s: float, stale_dropped: int) -> AckInfo:
        """The ACK's payload, with what the client measured around it."""
        return cls(
            interrupted=tuple(ack.interrupted),
            interrupted_count=ack.interrupted_count,
            reason=ack.reason,
            targets=MappingProxyType(dict(ack.targets)),
            rtt_s=rtt_s,
            stale_dropped=stale_dropped,
        )


class Response:
    """The reply to one request: an async iterator of :class:`Chunk` (``seq``, ``delta``).

    Iteration ends when the request ends: after the last chunk when the server's
    DONE comes, or *at once* when the client interrupts it (chunks not consumed by
    then are dropped). An ERROR refusing the request ends it with
    :class:`ServerError`. Chunks wait in an unbounded buffer, so a consumer that is
    slow (or never iterates) delays nobody else.

    Iterating is cancel-safe: a cancelled ``__anext__`` takes no chunk.

    A spoken reply (protocol v1.1) also has audio: :meth:`audio` iterates its
    :class:`AudioChunk` values, with the same rules (it ends at once on a local
    interrupt, which drops the audio not yet taken). The response keeps a
    *playback clock*, :attr:`played_ms`, which an interrupt of this request sends
    as ``played_ms`` so the server can tell what the user heard (``heard_text``).
    """

    def __init__(self, client: _OwningClient, state: RequestState) -> None:
        self._client = client
        self._state = state
        self._changed = trio.lowlevel.ParkingLot()
        #: Set when the client closed before the server's last word.
        self._closed = False
        self._playback_clock: Callable[[], float] | None = None

    def __repr__(self) -> str:
        return f"<Response {self.request_id} ended={self.ended} frames={self._state.frames}>"

    @property
    def request_id(self) -> str:
        return self._state.request_id

    @property
    def text(self) -> str:
        """The text of every chunk that arrived before the request ended (consumed or not)."""
        return "".join(self._state.parts)

    @property
    def ended(self) -> bool:
        """True once the request is over for the user (done, interrupted, or refused)."""
        return self._state.ended

    @property
    def done_info(self) -> DoneInfo | None:
        """What :meth:`done` returns, once the request is over for the user; ``None``
        before that, and for a request the server refused."""
        return self._state.done

    @property
    def interrupted_locally(self) -> bool:
        """True when this client cut the request before the server's DONE arrived."""
        return self._state.cut_by is not None

    @property
    def stale_dropped(self) -> int:
        """STREAM frames that arrived after the local cut and were dropped (so far)."""
        return self._state.stale_dropped

    @property
    def server_done(self) -> DoneInfo | None:
        """The DONE the server sent, once read. After a local cut it comes later than
        :meth:`done`, and says what the server really did (it may even have completed)."""
        return self._state.server_done

    # ------------------------------------------------------------------ speech

    @property
    def spoken(self) -> bool:
        """True when the request asked for speech or audio of it has arrived."""
        return self._state.voice or self._state.audio_frames > 0

    @property
    def audio_received_ms(self) -> float:
        """Milliseconds of audio that arrived before the request ended (taken or not)."""
        return self._state.audio_received_ms

    @property
    def audio_queued_ms(self) -> float:
        """Milliseconds of audio that arrived and :meth:`audio` has not handed out yet."""
        return sum(chunk.duration_ms for chunk in self._state.audio)

    @property
    def stale_audio_dropped(self) -> int:
        """AUDIO frames that arrived after the local cut and were dropped (so far)."""
        return self._state.stale_audio_dropped

    @property
    def played_ms(self) -> float:
        """The playback clock: how much of this reply's audio the user has heard.

        The client cannot hear the speaker, so by default this is the audio the
        application has taken from :meth:`audio` so far (a consumer that plays
        each chunk as it takes it keeps this honest). A player that knows better
        installs its own clock with :meth:`use_playback_clock`. It is what
        :meth:`AgentClient.interrupt` sends as ``played_ms`` for this request.
        """
        if self._playback_clock is not None:
            return max(0.0, float(self._playback_clock()))
        return self._state.audio_consumed_ms

    def use_playback_clock(self, clock: Callable[[], float] | None) -> None:
        """Make :attr:`played_ms` read ``clock()`` (milliseconds heard so far);
        ``None`` goes back to the audio taken from :meth:`audio`."""
        self._playback_clock = clock

    @property
    def audio_ms(self) -> float | None:
        """Audio the server wrote for this reply, from its DONE (``None`` before it,
        or when the reply was not spoken)."""
        done = self._state.server_done
        return done.audio_ms if done is not None else None

    @property
    def heard_ms(self) -> float | None:
        """How much the user heard, by the server's DONE: ``played_ms`` capped by
        :attr:`audio_ms` after an interrupt of this request, else :attr:`audio_ms`."""
        done = self._state.server_done
        return done.heard_ms if done is not None else None

    @property
    def heard_text(self) -> str | None:
        """The words whose audio lies wholly within :attr:`heard_ms`, by the server's
        DONE: what the user actually heard. ``None`` until that DONE arrives (wait
        with :meth:`wait_server_done`), or when the reply was not spoken."""
        done = self._state.server_done
        return done.heard_text if done is not None else None

    def audio(self) -> AsyncIterator[AudioChunk]:
        """Iterate the reply's audio chunks as they arrive, until the request ends.

        Ends at once when the client interrupts the request (audio not taken by
        then is dropped), after the last chunk when the server's DONE comes, and
        at once for a reply that is not spoken. One consumer: each chunk is handed
        out once. Cancel-safe: a cancelled step takes no chunk.
        """
        return self._audio_chunks()

    async def _audio_chunks(self) -> AsyncIterator[AudioChunk]:
        state = self._state
        while True:
            await trio.lowlevel.checkpoint()
            while True:
                if state.audio:
                    break
                if state.error is not None and state.cut_by is None:
                    raise _server_error(state.error, state)
                if state.ended:
                    return
                if self._closed:
                    raise self._client._closed_error()
                await self._changed.park()
            yield state.take_audio()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        await trio.lowlevel.checkpoint()
        state = self._state
        while True:
            if state.chunks:
                return state.chunks.popleft()
            if state.error is not None and state.cut_by is None:
                raise _server_error(state.error, state)
            if state.ended:
                raise StopAsyncIteration
            if self._closed:
                raise self._client._closed_error()
            await self._changed.park()

    async def done(self) -> DoneInfo:
        """Wait until the request is over for the user; return how it ended.

        Returns at once after a local interrupt (``local=True``). Raises
        :class:`ServerError` if the server refused the request, and
        :class:`ClientClosed` (or the client's failure) if the client closed first.
        Does not consume chunks.
        """
        return await self._wait_for(lambda state: state.done)

    async def wait_server_done(self) -> DoneInfo:
        """Wait for the server's own DONE (the same as :meth:`done` unless the client
        interrupted the request). Raises like :meth:`done`."""
        return await self._wait_for(lambda state: state.server_done)

    async def _wait_for(self, ending: Callable[[RequestState], DoneInfo | None]) -> DoneInfo:
        await trio.lowlevel.checkpoint()
        state = self._state
        while True:
            if (info := ending(state)) is not None:
                return info
            if state.error is not None:
                raise _server_error(state.error, state)
            if self._closed:
                raise self._client._closed_error()
            await self._changed.park()

    async def interrupt(
        self, *, reason: str = DEFAULT_INTERRUPT_REASON, played_ms: float | None = None
    ) -> InterruptHandle:
        """``client.interrupt(self.request_id, reason=reason, played_ms=played_ms)``."""
        return await self._client.interrupt(self.request_id, reason=reason, played_ms=played_ms)

    def _wake(self) -> None:
        self._changed.unpark_all()

    def _close(self) -> None:
        self._closed = not self._state.settled
        self._changed.unpark_all()


def _server_error(error: ErrorInfo, state: RequestState) -> ServerError:
    return ServerError(error.code, error.message, ref=state.msg_id, request_id=state.request_id)


class InterruptHandle:
    """An INTERRUPT that has been sent. ``cut`` names the requests it ended locally."""

    def __init__(self, client: _OwningClient, state: InterruptState, queued: QueuedFrame) -> None:
        self._client = client
        self._state = state
        self._queued = queued
        self._answered = trio.Event()
        self._ack: AckInfo | None = None
        self._refused: ServerError | None = None

    def __repr__(self) -> str:
        return f"<InterruptHandle {self.msg_id} target={self.request_id or '*'} cut={self.cut}>"

    @property
    def msg_id(self) -> str:
        return self._state.msg_id

    @property
    def request_id(self) -> str | None:
        """The request it names, or ``None`` for all requests."""
        return self._state.request_id

    @property
    def reason(self) -> str:
        return self._state.reason

    @property
    def cut(self) -> tuple[str, ...]:
        """The requests this interrupt ended locally, before anything was sent."""
        return tuple(state.request_id for state in self._state.cut)

    @property
    def ack(self) -> AckInfo | None:
        """The ACK, once it has arrived."""
        return self._ack

    # The timeout is a parameter on purpose: its 15 s default is part of the contract.
    async def acknowledged(self, timeout: float | None = 15.0) -> AckInfo:  # noqa: ASYNC109
        """Wait for the INTERRUPT_ACK, at most ``timeout`` seconds from this call
        (``None``: no limit), and report what the server cut.

        Raises :class:`AckTimeout` when the time is up (the local cut stands either
        way), :class:`ServerError` if the server refused the INTERRUPT, and
        :class:`ClientClosed` (or the client's failure) if the client closed first.
        Returns at once if the ACK has already come; may be called any number of times.
        """
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await self._answered.wait()
        if self._ack is not None:
            return self._ack
        if self._refused is not None:
            raise self._refused
        if self._answered.is_set():
            raise self._client._closed_error()
        assert timeout is not None
        raise AckTimeout(self.msg_id, timeout)

    def _acknowledged(self, ack: AckInfo) -> None:
        self._ack = ack
        self._answered.set()

    def _refuse(self, error: ServerError) -> None:
        self._refused = error
        self._answered.set()

    def _close(self) -> None:
        self._answered.set()
