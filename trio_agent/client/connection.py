"""The Trio client: :class:`AgentClient` and :func:`open_agent_client`.

The client runs in its own nursery (a reader, a writer and a heartbeat task) and
keeps its client state in :class:`~trio_agent.client.state.ClientState`; this module is
the Trio shell around it. docs/client.md has the usage, the cancel-scope tree and
how each call behaves when cancelled.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from types import MappingProxyType
from typing import Any, Final

import trio
from loguru import logger
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_agent.client._exception_groups import lone_exception, raise_unwrapped
from trio_agent.client.errors import (
    AgentClientError,
    ClientClosed,
    ConnectionLost,
    HeartbeatTimeout,
    ProtocolViolation,
    ServerError,
)
from trio_agent.client.keeper import ConnectionKeeper, PendingHeartbeat
from trio_agent.client.outbox import Outbox, QueuedFrame
from trio_agent.client.response import AckInfo, InterruptHandle, Response
from trio_agent.client.resumption import (
    ConnectionEvent,
    EventReporter,
    ResumePolicy,
)
from trio_agent.client.state import (
    Acknowledged,
    ClientState,
    Event,
    HeartbeatAnswered,
    InterruptRefused,
    Opened,
    ProtocolBreach,
    Reopened,
    RequestUpdated,
    Resumed,
    ResumeRefused,
    UnclaimedError,
)
from trio_agent.client.websocket import (
    CLOSE_TIMEOUT_S,
    close_websocket,
    offered_subprotocols,
)
from trio_agent.protocol.messages import (
    DEFAULT_INTERRUPT_REASON,
    AgentEntry,
    AudioFormat,
    Limits,
    SessionMessage,
)

__all__ = ["AgentClient", "open_agent_client"]

#: The reason of the INTERRUPT sent for a request whose ``request()`` call was cancelled.
WITHDRAWN_REASON: Final = "CLIENT_CANCELLED"


class AgentClient(ConnectionKeeper):
    """A connection to a trio-agent server. Get one from :func:`open_agent_client`.

    Attributes set from the SESSION frame: :attr:`session_id`, :attr:`agents` (agent
    name -> its SESSION entry; iterating gives the names), :attr:`default_agent`,
    :attr:`limits`, :attr:`server`, :attr:`protocol`.
    """

    def __init__(self, *, strict: bool, resume: ResumePolicy | None = None) -> None:
        self.strict = strict
        self._resume_policy = resume
        self._reporter = EventReporter()
        #: What happens to the connection (``reconnecting``, ``resumed``,
        #: ``resume_failed``): a Trio receive channel of :class:`ConnectionEvent`,
        #: closed when the client ends, so ``async for event in client.events`` ends too.
        self.events: trio.MemoryReceiveChannel[ConnectionEvent] = self._reporter.receive
        #: Violations found (in ``strict`` mode the first one also ends the client).
        self.violations: list[ProtocolViolation] = []
        #: The round-trip time of the last answered HEARTBEAT, in seconds.
        self.rtt_s: float | None = None
        self._client_state = ClientState()
        self._session: SessionMessage | None = None
        self._ws: WebSocketConnection | None = None
        self._nursery: trio.Nursery | None = None
        self._responses: dict[str, Response] = {}
        self._handles: dict[str, InterruptHandle] = {}
        self._heartbeats: dict[str, PendingHeartbeat] = {}
        self._outbox = Outbox()
        self._failure: AgentClientError | None = None
        self._closing = False
        self._log = logger
        self._link: trio.CancelScope | None = None
        self._dropped: ConnectionLost | None = None
        self._rng = random.Random()
        self._patience = 10.0

    @property
    def connected(self) -> bool:
        """False while the client is reconnecting after a drop (requests and
        interrupts made meanwhile wait and are sent once the session is resumed)."""
        return self._ws is not None and self._dropped is None

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
        state, outgoing = self._client_state.request(
            input, agent=agent, options=options, timeout_s=timeout_s, request_id=request_id
        )
        response = Response(self, state)
        self._responses[state.request_id] = response
        queued = self._outbox.put(outgoing)
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
        and giving one is a ``ValueError``. So is a ``reason`` over 256 characters
        (the protocol's bound), before anything is cut.
        """
        self._check_open()
        if played_ms is None and request_id is not None:
            response = self._responses.get(request_id)
            if response is not None and response.spoken and not response.ended:
                played_ms = response.played_ms
        state, outgoing = self._client_state.interrupt(request_id, reason, played_ms=played_ms)
        for cut in state.cut:
            response = self._responses.get(cut.request_id)
            if response is not None:
                response._wake()
        queued = self._outbox.put(outgoing)
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
        outgoing = self._client_state.heartbeat()
        pending = PendingHeartbeat(self._outbox.put(outgoing))
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
        if self._failure is not None or self._closing or self._session is None:
            raise self._closed_error()

    def _closed_error(self) -> ClientClosed:
        """A fresh exception for a call that cannot complete because the client is
        over; it is chained to the failure that ended the client, if any."""
        if self._failure is None:
            return ClientClosed("the client is closed")
        error = ClientClosed(f"the client has failed: {self._failure}")
        error.__cause__ = self._failure
        return error

    async def _wait_written(self, queued: QueuedFrame) -> None:
        await queued.written.wait()
        if queued.dropped:
            raise self._closed_error()

    def _withdraw(self, response: Response, queued: QueuedFrame) -> None:
        """Undo a request whose ``request()`` call did not complete. Synchronous."""
        if self._closing or self._failure is not None:
            return
        if queued.taken_at is None:
            self._outbox.remove(queued)
            self._client_state.forget(response._state)
            self._responses.pop(response.request_id, None)
        elif not response.ended:
            state, outgoing = self._client_state.interrupt(response.request_id, WITHDRAWN_REASON)
            self._handles[state.msg_id] = InterruptHandle(self, state, self._outbox.put(outgoing))
            response._wake()

    async def _write_loop(self, ws: WebSocketConnection) -> None:
        """Send queued frames in order. The only task that sends on the socket, so a
        cancelled caller can never leave half a frame on the wire."""
        while True:
            queued = await self._outbox.take()
            self._client_state.sending(queued.outgoing)
            try:
                await ws.send_message(queued.outgoing.text)
            except ConnectionClosed as closed:
                self._lost(ConnectionLost.from_close(closed.reason))
                return
            finally:
                # Handed to the socket, whatever became of it: after a resume the
                # RESUMED says whether the server saw it (ClientState.resume).
                queued.written.set()

    # ------------------------------------------------------------------ receiving

    async def _read_loop(self, ws: WebSocketConnection) -> None:
        """Receive and act on every frame at once. Acting never waits (buffers are
        unbounded), so an ACK is handled as soon as it is read, whatever the
        consumers of the responses are doing."""
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed as closed:
                self._lost(ConnectionLost.from_close(closed.reason))
                return
            for event in self._client_state.receive(raw):
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
                rtt_s = trio.current_time() - sent_at if sent_at is not None else 0.0
                handle._acknowledged(
                    AckInfo.from_ack(ack, rtt_s=rtt_s, stale_dropped=interrupt.stale_dropped)
                )
            case HeartbeatAnswered(ref=ref):
                pending = self._heartbeats.get(ref)
                if pending is not None and pending.queued.taken_at is not None:
                    pending.rtt_s = self.rtt_s = trio.current_time() - pending.queued.taken_at
                    pending.answered.set()
            case InterruptRefused(interrupt=interrupt, error=error):
                handle = self._handles.pop(interrupt.msg_id, None)
                if handle is not None:
                    handle._refuse(ServerError.from_message(error))
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
            case Opened() | Reopened() | Resumed() | ResumeRefused():
                pass  # only the first frame opens a connection; _connect and _resume read it

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
                self._lost(
                    HeartbeatTimeout(
                        f"the server did not answer a HEARTBEAT within {patience:g} s; "
                        "it is unreachable or stuck"
                    )
                )
                return
            await trio.sleep_until(started + interval)

    # ------------------------------------------------------------------ lifecycle

    async def _close(self, nursery: trio.Nursery) -> None:
        """End the client: fail what still waits, close the WebSocket (bounded and
        shielded, so it also happens when the block is being cancelled), then stop
        every task of the client."""
        self._closing = True
        self._abandon()
        if self._ws is not None:
            # After a failure the peer is gone or misbehaving: do not wait for its
            # close frame, just close our end.
            await close_websocket(self._ws, grace=CLOSE_TIMEOUT_S if self._failure is None else 0)
        self._reporter.close()
        nursery.cancel_scope.cancel(reason="client closed")

    def _fail(self, failure: AgentClientError) -> None:
        """Record why the client cannot go on (the first reason wins), wake every
        waiter with it, and cancel the client's nursery, body included."""
        if self._closing or self._failure is not None:
            return
        self._failure = failure
        self._log.debug("client failed: {}", failure)
        self._abandon()
        self._reporter.close()
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
        self._outbox.drop_all()


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
    open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    resume: bool = True,
    resume_attempts: int = 5,
    resume_backoff_s: float = 0.2,
    resume_backoff_max_s: float = 5.0,
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
        from then on, and closes it. A client given a ``stream`` cannot reconnect
        unless ``open_stream`` is given too.
    :param open_stream: called for each connection after the first (and for the
        first when ``stream`` is not given) to open its stream instead of dialling
        the URL's host; the client owns each stream it returns.
    :param resume: when the server's SESSION offers resumption (protocol v1.2) and
        the connection drops (no close frame, a heartbeat timeout, any close but
        1000, 1001, 1008 and 4001), reconnect and resume the session: responses go
        on where they stopped. ``False``: a drop ends the client, as in v1.1.
    :param resume_attempts: how many connections to try before giving up.
    :param resume_backoff_s: the first wait before reconnecting; each attempt
        doubles it, up to ``resume_backoff_max_s``, and a random part (up to half)
        is taken off so that clients do not all return at once. No attempt starts
        after the offer's ``window_s``.
    :param resume_backoff_max_s: the longest wait between two attempts.

    :attr:`AgentClient.events` reports ``reconnecting``, ``resumed`` and
    ``resume_failed`` (:class:`~trio_agent.client.resumption.ConnectionEvent`).

    The block exits with :class:`ConnectionFailed` if the connection cannot be
    made, and with :class:`ConnectionLost` (:class:`HeartbeatTimeout`) or
    :class:`ProtocolViolation` if the connection fails while in use; the body is
    cancelled first. When the block ends, for whatever reason, every task of the
    client has ended and the WebSocket is closed (requests still running are then
    cancelled by the server).
    """
    subprotocols = offered_subprotocols(token)
    if heartbeat_s is not None and not heartbeat_s > 0:
        raise ValueError(f"heartbeat_s must be positive or None, not {heartbeat_s!r}")
    beat_timeout = heartbeat_timeout_s if heartbeat_timeout_s is not None else heartbeat_s
    if beat_timeout is not None and not beat_timeout > 0:
        raise ValueError(f"heartbeat_timeout_s must be positive, not {beat_timeout!r}")

    policy = (
        ResumePolicy(resume_attempts, resume_backoff_s, resume_backoff_max_s)
        if resume and (stream is None or open_stream is not None)
        else None
    )
    client = AgentClient(strict=strict, resume=policy)
    client._patience = connect_timeout_s
    first: list[trio.abc.Stream | None] = [stream]

    async def next_stream() -> trio.abc.Stream | None:
        if first:
            given = first.pop()
            if given is not None or open_stream is None:
                return given
        return await open_stream() if open_stream is not None else None

    heartbeat = (
        (heartbeat_s, beat_timeout)
        if heartbeat_s is not None and beat_timeout is not None
        else None
    )
    try:
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            await nursery.start(
                client._keep_connected,
                next_stream,
                partial(client._connect, url, subprotocols, ssl_context),
                heartbeat,
                name="trio-agent client connection",
            )
            try:
                yield client
            finally:
                await client._close(nursery)
    except BaseExceptionGroup as group:
        # The background tasks never raise, so the group holds what the body (or the
        # setup before it) raised; hand that back as it is, not wrapped.
        error = client._failure or lone_exception(group)
        if error is None:
            raise
        raise_unwrapped(error)
    if client._failure is not None:
        raise client._failure
