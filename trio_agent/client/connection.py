"""The Python client: stream replies, interrupt them optimistically, check the server.

::

    async with open_agent_client("ws://127.0.0.1:8765/ws") as client:
        response = await client.request("Tell me a story", agent="lorem")
        async for chunk in response:
            print(chunk.delta, end="", flush=True)
            if user_pressed_stop():
                await client.interrupt(response.request_id)   # the loop ends at once
        print((await response.done()).status)

A spoken reply (``request(..., voice=True)``, protocol v1.1) also streams audio::

    response = await client.request("Tell me a story", voice=True)
    async for audio in response.audio():       # AudioChunk: pcm_s16le bytes + timing
        player.write(audio.samples)
    await client.interrupt(response.request_id)  # sends played_ms: what was heard
    print((await response.wait_server_done()).heard_text)

The cancel-scope tree of a client::

    open_agent_client
    └── client nursery             <- the `async with` body runs inside it
        ├── connection task        <- holds the WebSocket; trio-websocket's reader below it
        ├── reader task            <- the only task that receives; never waits for a consumer
        ├── writer task            <- the only task that sends
        └── heartbeat task         <- HEARTBEAT every heartbeat_s, fails the client on silence

The background tasks never raise into the nursery. When one of them finds the
connection unusable (closed, silent, or, in ``strict`` mode, breaking the
protocol) it records the failure and cancels the nursery; the ``async with``
then exits with that exception (:class:`ConnectionLost`,
:class:`HeartbeatTimeout`, :class:`ProtocolViolation`), never an
``ExceptionGroup``. An exception from the body leaves the block as it is.

The bookkeeping (which request a frame belongs to, what an interrupt cut, what is
stale) is pure code in :mod:`trio_agent.client.state`; this module is the Trio
shell around it. docs/client.md explains the behaviour in prose.
"""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NoReturn, Self
from urllib.parse import SplitResult, urlsplit

import trio
from loguru import logger
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from trio_agent.client.state import (
    Acknowledged,
    AudioChunk,
    Chunk,
    ClientState,
    DoneInfo,
    Event,
    HeartbeatAnswered,
    InterruptRefused,
    InterruptState,
    Opened,
    Outgoing,
    ProtocolBreach,
    RequestState,
    RequestUpdated,
    UnclaimedError,
)
from trio_agent.protocol.constants import SUBPROTOCOL, TOKEN_CHARACTERS, TOKEN_SUBPROTOCOL_PREFIX
from trio_agent.protocol.messages import (
    DEFAULT_INTERRUPT_REASON,
    AgentEntry,
    AudioFormat,
    ErrorInfo,
    Limits,
    SessionMessage,
    TargetOutcome,
)

__all__ = [
    "AckInfo",
    "AckTimeout",
    "AgentClient",
    "AgentClientError",
    "AudioChunk",
    "AudioFormat",
    "Chunk",
    "ClientClosed",
    "ConnectionFailed",
    "ConnectionLost",
    "DoneInfo",
    "HeartbeatTimeout",
    "InterruptHandle",
    "ProtocolViolation",
    "Response",
    "ServerError",
    "check_token",
    "open_agent_client",
]

#: How long closing the WebSocket may take before the client drops the connection.
CLOSE_TIMEOUT_S: Final = 1.0
#: The reason of the INTERRUPT sent for a request whose ``request()`` call was cancelled.
WITHDRAWN_REASON: Final = "CLIENT_CANCELLED"


# --------------------------------------------------------------------------- errors


class AgentClientError(Exception):
    """The base of every error this client raises on purpose."""


class ConnectionFailed(AgentClientError):
    """The client could not connect: no server, a refused handshake (``status_code``),
    a timeout, or a first frame that is not SESSION."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ConnectionLost(AgentClientError):
    """The connection ended while the client was using it. ``code`` and ``reason``
    are the WebSocket close code and reason when there was a close frame."""

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason

    @classmethod
    def from_close(cls, close: CloseReason | None) -> ConnectionLost:
        if close is None:
            return cls("the connection was closed")
        why = f": {close.reason}" if close.reason else ""
        return cls(
            f"the server closed the connection ({close.code} {close.name}{why})",
            code=close.code,
            reason=close.reason,
        )


class HeartbeatTimeout(ConnectionLost):
    """The server did not answer a HEARTBEAT in time: it is gone or stuck."""


class ClientClosed(AgentClientError):
    """The client's ``async with`` block has ended (or is ending), so the call cannot
    complete: a reply that never finished, an ACK that never came, a late request."""


class ServerError(AgentClientError):
    """The server refused a REQUEST or an INTERRUPT with an ERROR frame."""

    def __init__(
        self, code: str, message: str, *, ref: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref
        self.request_id = request_id


class AckTimeout(AgentClientError, trio.TooSlowError):
    """No INTERRUPT_ACK within the time given to :meth:`InterruptHandle.acknowledged`.

    The interrupt still holds locally: the responses it cut stay ended.
    """

    def __init__(self, msg_id: str, timeout: float) -> None:
        super().__init__(f"no INTERRUPT_ACK for {msg_id!r} within {timeout:g} s")
        self.msg_id = msg_id
        self.timeout = timeout


class ProtocolViolation(AgentClientError):
    """The server broke protocol v1.

    ``guarantee`` is the number of the broken guarantee in docs/protocol.md, or
    ``None`` when the frame itself is not a valid protocol v1 server frame;
    ``frame`` is (the start of) the offending frame. In ``strict`` mode the client's
    ``async with`` exits with this exception; otherwise it is logged and kept in
    :attr:`AgentClient.violations`.
    """

    def __init__(self, guarantee: int | None, message: str, frame: str) -> None:
        what = f"guarantee {guarantee}" if guarantee is not None else "protocol v1"
        super().__init__(f"the server broke {what}: {message}")
        self.guarantee = guarantee
        self.message = message
        self.frame = frame


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- responses


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

    def __init__(self, client: AgentClient, state: RequestState) -> None:
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

    def __init__(self, client: AgentClient, state: InterruptState, queued: _Queued) -> None:
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


# --------------------------------------------------------------------------- the client


class _Queued:
    """A frame in the writer's queue; ``written`` is set once it is on the socket."""

    __slots__ = ("dropped", "outgoing", "taken_at", "written")

    def __init__(self, outgoing: Outgoing) -> None:
        self.outgoing = outgoing
        self.written = trio.Event()
        #: ``trio.current_time()`` when the writer took it (``None``: still queued).
        self.taken_at: float | None = None
        #: True when the client closed before it could be written.
        self.dropped = False


class _PendingHeartbeat:
    __slots__ = ("answered", "queued", "rtt_s")

    def __init__(self, queued: _Queued) -> None:
        self.queued = queued
        self.answered = trio.Event()
        self.rtt_s: float | None = None


class AgentClient:
    """A connection to a trio-agent server. Get one from :func:`open_agent_client`.

    Attributes set from the SESSION frame: :attr:`session_id`, :attr:`agents` (agent
    name -> its SESSION entry; iterating gives the names), :attr:`default_agent`,
    :attr:`limits`, :attr:`server`, :attr:`protocol`.
    """

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        #: Violations found (in ``strict`` mode the first one also ends the client).
        self.violations: list[ProtocolViolation] = []
        #: The round-trip time of the last answered HEARTBEAT, in seconds.
        self.rtt_s: float | None = None
        self._conversation = ClientState()
        self._session: SessionMessage | None = None
        self._ws: WebSocketConnection | None = None
        self._nursery: trio.Nursery | None = None
        self._responses: dict[str, Response] = {}
        self._handles: dict[str, InterruptHandle] = {}
        self._heartbeats: dict[str, _PendingHeartbeat] = {}
        self._outbox: deque[_Queued] = deque()
        self._outbox_ready = trio.lowlevel.ParkingLot()
        self._failure: AgentClientError | None = None
        self._closing = False
        self._log = logger

    # ------------------------------------------------------------------ what SESSION said

    @property
    def session_id(self) -> str:
        return self._opened.session_id

    @property
    def agents(self) -> Mapping[str, AgentEntry]:
        return MappingProxyType(self._opened.payload.agents)

    @property
    def default_agent(self) -> str | None:
        return self._opened.payload.default_agent

    @property
    def limits(self) -> Limits:
        return self._opened.payload.limits

    @property
    def server(self) -> str:
        """The server's name and version, e.g. ``trio-agent/0.1.0``."""
        return self._opened.payload.server

    @property
    def protocol(self) -> str:
        return self._opened.payload.protocol

    @property
    def voices(self) -> tuple[str, ...]:
        """The voices the server can speak with (empty: it cannot speak)."""
        return tuple(self._opened.payload.voices)

    @property
    def default_voice(self) -> str | None:
        """The voice ``voice=True`` picks."""
        return self._opened.payload.default_voice

    @property
    def audio_formats(self) -> tuple[AudioFormat, ...]:
        """The audio formats the server sends (format, sample rate, channels)."""
        return tuple(self._opened.payload.audio_formats)

    @property
    def synthesizer(self) -> str | None:
        """What the server speaks with (``espeak-ng``, ``builtin``), or ``None``."""
        return self._opened.payload.synthesizer

    @property
    def _opened(self) -> SessionMessage:
        if self._session is None:
            raise RuntimeError("the client is not connected yet")
        return self._session

    # ------------------------------------------------------------------ the API

    async def request(
        self,
        input: str,
        *,
        agent: str | None = None,
        options: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        voice: str | bool | None = None,
        audio_pace: float | None = None,
    ) -> Response:
        """Start a request and return its :class:`Response` once the REQUEST is on
        the socket. ``request_id`` defaults to a fresh id, unique on this client.

        ``voice`` asks for a spoken reply (a voice name from :attr:`voices`, or
        ``True`` for the default) and ``audio_pace`` sets how fast its audio comes
        (1: real time; 0: as fast as the connection allows); both go into
        ``options``. Iterate the audio with :meth:`Response.audio`.

        Raises ``ValueError`` for an invalid field or an id still in use here.
        Cancelling this call withdraws the request: if its REQUEST was not written
        yet it is never sent, otherwise an INTERRUPT for it follows at once (reason
        ``CLIENT_CANCELLED``). Either way nothing of it is left running.
        """
        self._check_open()
        if voice is not None or audio_pace is not None:
            options = dict(options or {})
            if voice is not None:
                options["voice"] = voice
            if audio_pace is not None:
                options["audio_pace"] = audio_pace
        state, outgoing = self._conversation.request(
            input, agent=agent, options=options, timeout_s=timeout_s, request_id=request_id
        )
        response = Response(self, state)
        self._responses[state.request_id] = response
        queued = self._queue(outgoing)
        try:
            await self._wait_written(queued)
        except BaseException:
            self._withdraw(response, queued)
            raise
        return response

    async def interrupt(
        self,
        request_id: str | None = None,
        *,
        reason: str = DEFAULT_INTERRUPT_REASON,
        played_ms: float | None = None,
    ) -> InterruptHandle:
        """Interrupt one request (``request_id``) or, with ``None``, all of them.

        **Optimistic**: before anything is sent, the targeted responses end locally
        with status ``interrupted`` (their iteration stops, unconsumed chunks and
        audio are dropped), and any STREAM or AUDIO frame of theirs that still
        arrives is dropped and counted. Returns once the INTERRUPT is on the
        socket, never waiting for the ACK: use :meth:`InterruptHandle.acknowledged`
        for that. If this call is cancelled the local cut stands and the INTERRUPT
        is still sent.

        Interrupting one spoken request sends ``played_ms``: the value given, or
        else the response's playback clock (:attr:`Response.played_ms`), read
        before the cut. An interrupt-all sends none (the server would ignore it),
        and giving one is a ``ValueError``.
        """
        self._check_open()
        if played_ms is None and request_id is not None:
            response = self._responses.get(request_id)
            if response is not None and response.spoken and not response.ended:
                played_ms = response.played_ms
        state, outgoing = self._conversation.interrupt(request_id, reason, played_ms=played_ms)
        for cut in state.cut:
            response = self._responses.get(cut.request_id)
            if response is not None:
                response._wake()
        queued = self._queue(outgoing)
        handle = InterruptHandle(self, state, queued)
        self._handles[state.msg_id] = handle
        await self._wait_written(queued)
        return handle

    async def heartbeat(self) -> float:
        """Send a HEARTBEAT now and return its round-trip time in seconds.

        Also updates :attr:`rtt_s`. Waits as long as it takes; the heartbeat task
        calls it under a timeout. Cancelling it forgets the HEARTBEAT.
        """
        self._check_open()
        outgoing = self._conversation.heartbeat()
        pending = _PendingHeartbeat(self._queue(outgoing))
        self._heartbeats[outgoing.msg_id] = pending
        try:
            await self._wait_written(pending.queued)
            await pending.answered.wait()
        finally:
            self._heartbeats.pop(outgoing.msg_id, None)
        if pending.rtt_s is None:
            raise self._closed_error()
        return pending.rtt_s

    # ------------------------------------------------------------------ sending

    def _check_open(self) -> None:
        if self._failure is not None or self._closing or self._ws is None:
            raise self._closed_error()

    def _closed_error(self) -> ClientClosed:
        """A fresh exception for a call that cannot complete because the client is
        over; it is chained to the failure that ended the client, if any."""
        if self._failure is None:
            return ClientClosed("the client is closed")
        error = ClientClosed(f"the client has failed: {self._failure}")
        error.__cause__ = self._failure
        return error

    def _queue(self, outgoing: Outgoing) -> _Queued:
        queued = _Queued(outgoing)
        self._outbox.append(queued)
        self._outbox_ready.unpark()
        return queued

    async def _wait_written(self, queued: _Queued) -> None:
        await queued.written.wait()
        if queued.dropped:
            raise self._closed_error()

    def _withdraw(self, response: Response, queued: _Queued) -> None:
        """Undo a request whose ``request()`` call did not complete. Synchronous."""
        if self._closing or self._failure is not None:
            return
        if queued.taken_at is None:
            self._outbox.remove(queued)
            self._conversation.forget(response._state)
            self._responses.pop(response.request_id, None)
        elif not response.ended:
            state, outgoing = self._conversation.interrupt(response.request_id, WITHDRAWN_REASON)
            self._handles[state.msg_id] = InterruptHandle(self, state, self._queue(outgoing))
            response._wake()

    async def _write_loop(self, ws: WebSocketConnection) -> None:
        """Send queued frames in order. The only task that sends on the socket, so a
        cancelled caller can never leave half a frame on the wire."""
        try:
            while True:
                while not self._outbox:
                    await self._outbox_ready.park()
                queued = self._outbox.popleft()
                queued.taken_at = trio.current_time()
                self._conversation.sending(queued.outgoing)
                await ws.send_message(queued.outgoing.text)
                queued.written.set()
        except ConnectionClosed as closed:
            self._fail(ConnectionLost.from_close(closed.reason))

    # ------------------------------------------------------------------ receiving

    async def _read_loop(self, ws: WebSocketConnection) -> None:
        """Receive and act on every frame at once. Acting never waits (buffers are
        unbounded), so an ACK is handled as soon as it is read, whatever the
        consumers of the responses are doing."""
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed as closed:
                self._fail(ConnectionLost.from_close(closed.reason))
                return
            for event in self._conversation.receive(raw):
                self._act(event)
                if self._failure is not None:
                    return

    def _act(self, event: Event) -> None:
        match event:
            case RequestUpdated(state=state):
                response = self._responses.get(state.request_id)
                if response is None or response._state is not state:
                    return
                if state.settled:
                    del self._responses[state.request_id]
                response._wake()
            case Acknowledged(interrupt=interrupt, payload=ack):
                handle = self._handles.pop(interrupt.msg_id, None)
                if handle is None:
                    return
                sent_at = handle._queued.taken_at
                handle._acknowledged(
                    AckInfo(
                        interrupted=tuple(ack.interrupted),
                        interrupted_count=ack.interrupted_count,
                        reason=ack.reason,
                        targets=MappingProxyType(dict(ack.targets)),
                        rtt_s=trio.current_time() - sent_at if sent_at is not None else 0.0,
                        stale_dropped=interrupt.stale_dropped,
                    )
                )
            case HeartbeatAnswered(ref=ref):
                pending = self._heartbeats.get(ref)
                if pending is not None and pending.queued.taken_at is not None:
                    pending.rtt_s = self.rtt_s = trio.current_time() - pending.queued.taken_at
                    pending.answered.set()
            case InterruptRefused(interrupt=interrupt, error=error):
                handle = self._handles.pop(interrupt.msg_id, None)
                if handle is not None:
                    handle._refuse(
                        ServerError(
                            str(error.payload.code),
                            error.payload.message,
                            ref=error.ref,
                            request_id=error.request_id,
                        )
                    )
            case UnclaimedError(error=error):
                self._log.warning(
                    "ERROR from the server: {}: {}", error.payload.code, error.payload.message
                )
            case ProtocolBreach(guarantee=guarantee, message=message, frame=frame):
                violation = ProtocolViolation(guarantee, message, frame)
                self.violations.append(violation)
                if self.strict:
                    self._fail(violation)
                else:
                    self._log.warning("protocol violation by the server: {}", violation)
            case Opened():
                pass  # only the first frame opens a session; _connect reads it

    # ------------------------------------------------------------------ heartbeats

    async def _heartbeat_loop(self, interval: float, patience: float) -> None:
        """A HEARTBEAT every ``interval`` seconds; no answer within ``patience``
        seconds fails the client with :class:`HeartbeatTimeout`."""
        while True:
            started = trio.current_time()
            with trio.move_on_after(patience) as waiting:
                try:
                    await self.heartbeat()
                except ClientClosed:
                    return  # the client is ending anyway
            if waiting.cancelled_caught:
                self._fail(
                    HeartbeatTimeout(
                        f"the server did not answer a HEARTBEAT within {patience:g} s; "
                        "it is unreachable or stuck"
                    )
                )
                return
            await trio.sleep_until(started + interval)

    # ------------------------------------------------------------------ lifecycle

    async def _connect(
        self,
        url: str,
        subprotocols: list[str],
        ssl_context: ssl.SSLContext | None,
        stream: trio.abc.Stream | None,
        patience: float,
        *,
        task_status: trio.TaskStatus[WebSocketConnection] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the WebSocket, read the SESSION frame, and hold the connection open.

        trio-websocket's reader task runs in the nursery opened here, so its failures
        during the handshake come back as :class:`ConnectionFailed` from
        ``nursery.start()`` and never reach the client's nursery. The client opens
        the TCP stream itself and this task closes it when it ends, whatever ends
        it: trio-websocket leaves a stream open when the server closed first or the
        handshake failed.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConnectionFailed(f"{url!r} is not a ws:// or wss:// URL")
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(patience):
                    if stream is None:
                        stream = await _dial(parts, ssl_context)
                    ws = await wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]  # typed for sockets; any Stream works
                        _host_header(parts),
                        (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                        subprotocols=subprotocols,
                    )
                    first = await ws.get_message()
                events = self._conversation.receive(first)
                opened = [e for e in events if isinstance(e, Opened)]
                if not opened:
                    breach = next((e for e in events if isinstance(e, ProtocolBreach)), None)
                    raise ConnectionFailed(
                        "the server's first frame is not a valid SESSION"
                        + (f": {breach.message}" if breach else "")
                    )
                self._session = opened[0].session
                self._ws = ws
                self._log = logger.bind(session_id=self._session.session_id)
                task_status.started(ws)
                await trio.sleep_forever()
        except BaseExceptionGroup as group:
            error = _lone_exception(group)
            if error is None:
                raise
            if self._ws is not None:
                # After the handshake trio-websocket's reader does not raise; if it
                # ever does, the connection is unusable, and we say so.
                self._fail(ConnectionLost(f"the WebSocket failed: {error!r}"))
                return
            failed = _connect_error(error, url, patience)
            if failed is error:
                _raise_unwrapped(error)
            raise failed from error
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _close(self, nursery: trio.Nursery) -> None:
        """End the client: fail what still waits, close the WebSocket (bounded and
        shielded, so it also happens when the block is being cancelled), then stop
        every task of the client."""
        self._closing = True
        self._abandon()
        if self._ws is not None:
            # After a failure the peer is gone or misbehaving: do not wait for its
            # close frame, just close our end.
            await _close_websocket(self._ws, grace=CLOSE_TIMEOUT_S if self._failure is None else 0)
        nursery.cancel_scope.cancel(reason="client closed")

    def _fail(self, failure: AgentClientError) -> None:
        """Record why the client cannot go on (the first reason wins), wake every
        waiter with it, and cancel the client's nursery, body included."""
        if self._closing or self._failure is not None:
            return
        self._failure = failure
        self._log.debug("client failed: {}", failure)
        self._abandon()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel(reason=str(failure))

    def _abandon(self) -> None:
        """Wake everything that waits on the server: it will not answer any more."""
        for response in self._responses.values():
            response._close()
        self._responses.clear()
        for handle in self._handles.values():
            handle._close()
        self._handles.clear()
        for pending in self._heartbeats.values():
            pending.answered.set()
        while self._outbox:
            queued = self._outbox.popleft()
            queued.dropped = True
            queued.written.set()


@asynccontextmanager
async def open_agent_client(
    url: str,
    *,
    token: str | None = None,
    strict: bool = False,
    heartbeat_s: float | None = 10.0,
    heartbeat_timeout_s: float | None = None,
    connect_timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    stream: trio.abc.Stream | None = None,
) -> AsyncIterator[AgentClient]:
    """Connect to a trio-agent server; the client lives for the ``async with`` block.

    :param url: ``ws://host:port/path`` or ``wss://...``.
    :param token: an access token, offered as the subprotocol
        ``trio-agent.token.<token>`` next to ``trio-agent.v1``.
    :param strict: a protocol violation by the server ends the block with
        :class:`ProtocolViolation` (otherwise it is logged and recorded).
    :param heartbeat_s: send a HEARTBEAT this often (``None``: never). The first one
        goes at once, so :attr:`AgentClient.rtt_s` is known early.
    :param heartbeat_timeout_s: how long a HEARTBEAT may go unanswered before the
        client fails with :class:`HeartbeatTimeout` (default: ``heartbeat_s``).
    :param connect_timeout_s: limit for the handshake and the SESSION frame.
    :param ssl_context: for ``wss://`` URLs.
    :param stream: connect over this already-open Trio stream instead of dialling
        the URL's host (the URL still gives the Host header and the path): for
        unusual transports and for tests over memory streams. The client owns it
        from then on, and closes it.

    The block exits with :class:`ConnectionFailed` if the connection cannot be
    made, and with :class:`ConnectionLost` (:class:`HeartbeatTimeout`) or
    :class:`ProtocolViolation` if the connection fails while in use; the body is
    cancelled first. When the block ends, for whatever reason, every task of the
    client has ended and the WebSocket is closed (requests still running are then
    cancelled by the server).
    """
    subprotocols = [SUBPROTOCOL]
    if token is not None:
        subprotocols.append(TOKEN_SUBPROTOCOL_PREFIX + check_token(token))
    if heartbeat_s is not None and not heartbeat_s > 0:
        raise ValueError(f"heartbeat_s must be positive or None, not {heartbeat_s!r}")
    beat_timeout = heartbeat_timeout_s if heartbeat_timeout_s is not None else heartbeat_s
    if beat_timeout is not None and not beat_timeout > 0:
        raise ValueError(f"heartbeat_timeout_s must be positive, not {beat_timeout!r}")

    client = AgentClient(strict=strict)
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            ws = await nursery.start(
                client._connect, url, subprotocols, ssl_context, stream, connect_timeout_s
            )
            nursery.start_soon(client._read_loop, ws, name="trio-agent client reader")
            nursery.start_soon(client._write_loop, ws, name="trio-agent client writer")
            if heartbeat_s is not None and beat_timeout is not None:
                nursery.start_soon(
                    client._heartbeat_loop,
                    heartbeat_s,
                    beat_timeout,
                    name="trio-agent client heartbeat",
                )
            try:
                yield client
            finally:
                await client._close(nursery)
    except BaseExceptionGroup as group:
        # The background tasks never raise, so the group holds what the body (or the
        # setup before it) raised; hand that back as it is, not wrapped.
        error = client._failure or _lone_exception(group)
        if error is None:
            raise
        _raise_unwrapped(error)
    if client._failure is not None:
        raise client._failure


def check_token(token: str) -> str:
    """Return ``token`` if it can travel in a subprotocol name; raise ``ValueError`` if not."""
    if not token or not set(token) <= TOKEN_CHARACTERS:
        raise ValueError("a token may only contain RFC 7230 token characters (no spaces)")
    return token


async def _dial(parts: SplitResult, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    """Open the TCP (or TLS, for ``wss``) stream to the URL's host."""
    assert parts.hostname is not None
    if parts.scheme == "wss":
        stream = await trio.open_ssl_over_tcp_stream(
            parts.hostname,
            parts.port or 443,
            ssl_context=ssl_context or ssl.create_default_context(),
            https_compatible=True,
        )
        try:
            # Now, so that a certificate problem is reported as one, not later as a
            # WebSocket handshake that never completes.
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream
    if ssl_context is not None:
        raise ConnectionFailed("an ssl_context needs a wss:// URL")
    return await trio.open_tcp_stream(parts.hostname, parts.port or 80)


def _host_header(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2] or "localhost"


async def _close_websocket(ws: WebSocketConnection, *, grace: float) -> None:
    """Close ``ws``, waiting at most ``grace`` seconds for the close handshake.

    Shielded, so it also happens when the client is being cancelled. (The stream
    under it is closed by the connection task in any case.)
    """
    with trio.move_on_after(grace, shield=True):
        await ws.aclose()


def _connect_error(error: BaseException, url: str, timeout: float) -> ConnectionFailed:
    if isinstance(error, ConnectionFailed):
        return error
    if isinstance(error, ConnectionRejected):
        return ConnectionFailed(
            f"{url} refused the WebSocket handshake with HTTP {error.status_code}",
            status_code=error.status_code,
        )
    if isinstance(error, trio.TooSlowError):
        return ConnectionFailed(f"no SESSION from {url} within {timeout:g} s")
    if isinstance(error, ConnectionClosed):
        return ConnectionFailed(f"{url} closed the connection before its SESSION frame")
    if isinstance(error, trio.BrokenResourceError) and error.__cause__ is not None:
        return ConnectionFailed(f"cannot connect to {url}: {error.__cause__}")  # TLS
    if isinstance(error, HandshakeError | OSError):
        return ConnectionFailed(f"cannot connect to {url}: {error}")
    return ConnectionFailed(f"cannot connect to {url}: {error!r}")


def _lone_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception that is not a :class:`trio.Cancelled` in ``group`` (one level
    deep: a group the body itself raised stays whole), or ``None``."""
    _, rest = group.split(trio.Cancelled)
    if rest is not None and len(rest.exceptions) == 1:
        return rest.exceptions[0]
    return None


def _raise_unwrapped(error: BaseException) -> NoReturn:
    """Raise ``error`` without chaining it to the group it came out of (which
    contains it, and would print it twice)."""
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error
