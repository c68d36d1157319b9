"""Holding a connection, and resuming the session when it drops (protocol v1.2).

:class:`ConnectionKeeper` is the part of :class:`~trio_agent.client.connection.AgentClient`
that opens connections: the first one, with its SESSION, and, after a drop the
server allows to resume, each new one with its RESUME/RESUMED handshake, under a
jittered backoff. All of it runs in the client's nursery, so nothing outlives the
``async with``; every wait is cancellable. docs/client.md ("Resume") has the rules.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import loguru
import trio
from loguru import logger
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from trio_agent.client._exception_groups import lone_exception, raise_unwrapped
from trio_agent.client.errors import (
    AgentClientError,
    ConnectionFailed,
    ConnectionLost,
    ServerError,
)
from trio_agent.client.outbox import QueuedFrame
from trio_agent.client.resumption import (
    ConnectionEvent,
    EventReporter,
    ResumePolicy,
    is_resumable,
)
from trio_agent.client.state import (
    ClientState,
    Event,
    Opened,
    Outgoing,
    ProtocolBreach,
    Reopened,
    Resumed,
    ResumeRefused,
)
from trio_agent.client.websocket import (
    CLOSE_TIMEOUT_S,
    close_websocket,
    connection_failure,
    dial,
    host_header,
)
from trio_agent.protocol.messages import SessionMessage

__all__ = ["ConnectionKeeper", "PendingHeartbeat"]


class PendingHeartbeat:
    """A HEARTBEAT sent by :meth:`AgentClient.heartbeat`, waiting for its answer."""

    __slots__ = ("answered", "queued", "rtt_s")

    def __init__(self, queued: QueuedFrame) -> None:
        self.queued = queued
        self.answered = trio.Event()
        self.rtt_s: float | None = None


#: ``ConnectionKeeper._connect`` with its URL, subprotocols and TLS context bound.
Connect = Callable[..., Awaitable[None]]


class ConnectionKeeper:
    """Opens, holds and resumes the client's connections. The attributes and
    methods it only declares are :class:`AgentClient`'s."""

    _client_state: ClientState
    _session: SessionMessage | None
    _ws: WebSocketConnection | None
    _heartbeats: dict[str, PendingHeartbeat]
    _failure: AgentClientError | None
    _closing: bool
    _log: loguru.Logger
    _resume_policy: ResumePolicy | None
    _reporter: EventReporter
    #: The cancel scope of the current connection's tasks (reader, writer, heartbeats).
    _link: trio.CancelScope | None
    #: Why the current connection dropped, while the client tries to resume.
    _dropped: ConnectionLost | None
    _rng: random.Random
    #: The limit for a handshake with its SESSION (and a RESUME's answer).
    _patience: float

    def _fail(self, failure: AgentClientError) -> None:
        raise NotImplementedError

    def _act(self, event: Event) -> None:
        raise NotImplementedError

    async def _read_loop(self, ws: WebSocketConnection) -> None:
        raise NotImplementedError

    async def _write_loop(self, ws: WebSocketConnection) -> None:
        raise NotImplementedError

    async def _heartbeat_loop(self, interval: float, patience: float) -> None:
        raise NotImplementedError

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
        ws: WebSocketConnection | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(patience):
                    if stream is None:
                        stream = await dial(parts, ssl_context)
                    ws = await wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]  # typed for sockets; any Stream works
                        host_header(parts),
                        (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                        subprotocols=subprotocols,
                    )
                    first = await ws.get_message()
                events = self._client_state.receive(first)
                opened = [e for e in events if isinstance(e, Opened | Reopened)]
                if not opened:
                    breach = next((e for e in events if isinstance(e, ProtocolBreach)), None)
                    raise ConnectionFailed(
                        "the server's first frame is not a valid SESSION"
                        + (f": {breach.message}" if breach else "")
                    )
                if self._session is None:
                    self._session = opened[0].session
                    self._log = logger.bind(session_id=self._session.session_id)
                self._ws = ws
                task_status.started(ws)
                await trio.sleep_forever()
        except BaseExceptionGroup as group:
            error = lone_exception(group)
            if error is None:
                raise
            if self._ws is not None:
                # After the handshake trio-websocket's reader does not raise; if it
                # ever does, the connection is unusable, and we say so.
                self._fail(ConnectionLost(f"the WebSocket failed: {error!r}"))
                return
            failed = connection_failure(error, url, patience)
            if failed is error:
                raise_unwrapped(error)
            raise failed from error
        finally:
            if ws is not None and ws.closed is None and self._failure is None:
                # The client is ending on purpose, and a cancellation from outside
                # reaches this task as soon as the client's own close: send the close
                # frame (1000) before the stream goes, so that the server ends the
                # session rather than keeping it for a resume. Bounded and shielded.
                await close_websocket(ws, grace=CLOSE_TIMEOUT_S)
            if stream is not None:
                await trio.aclose_forcefully(stream)

    # ------------------------------------------------------------------ connections

    async def _keep_connected(
        self,
        open_stream: Callable[[], Awaitable[trio.abc.Stream | None]],
        connect: Connect,
        heartbeat: tuple[float, float] | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold the first connection, then, each time it drops in a resumable way,
        reconnect and resume until the client ends. Runs in the client's nursery,
        so nothing of it outlives the ``async with``."""
        try:
            async with trio.open_nursery() as link:
                self._link = link.cancel_scope
                ws = await link.start(connect, await self._open(open_stream), self._patience)
                self._go_live(link, ws, heartbeat)
                task_status.started()
        except BaseExceptionGroup as group:
            error = lone_exception(group)
            if error is None:
                raise
            raise_unwrapped(error)
        while self._dropped is not None:
            await self._resume(open_stream, connect, heartbeat)

    def _go_live(
        self,
        link: trio.Nursery,
        ws: WebSocketConnection,
        heartbeat: tuple[float, float] | None,
    ) -> None:
        """Start the tasks of a connection whose session is open (or resumed)."""
        link.start_soon(self._read_loop, ws, name="trio-agent client reader")
        link.start_soon(self._write_loop, ws, name="trio-agent client writer")
        if heartbeat is not None:
            link.start_soon(self._heartbeat_loop, *heartbeat, name="trio-agent client heartbeat")

    def _lost(self, lost: ConnectionLost) -> None:
        """The connection ended without the client asking. Resume if the server
        offered it, the close does not end the session on purpose and the client
        may; otherwise fail as :class:`ConnectionLost`."""
        if self._closing or self._failure is not None or self._dropped is not None:
            return
        if (
            self._resume_policy is None
            or self._client_state.resume_offer is None
            or not is_resumable(lost)
        ):
            self._fail(lost)
            return
        self._log.info("connection lost ({}); resuming", lost)
        self._dropped = lost
        self._ws = None
        if self._link is not None:
            self._link.cancel(reason="connection lost")

    async def _resume(
        self,
        open_stream: Callable[[], Awaitable[trio.abc.Stream | None]],
        connect: Connect,
        heartbeat: tuple[float, float] | None,
    ) -> None:
        """Reconnect with jittered backoff and resume the session, then hold the new
        connection until it drops (``_dropped`` is set again) or the client ends.
        Gives up, failing the client with :class:`ConnectionLost`, when the server
        refuses the RESUME, when the attempts run out, or when the offer's window
        has passed. Every wait here is cancellable."""
        assert self._resume_policy is not None
        assert self._dropped is not None
        policy = self._resume_policy
        why: AgentClientError = self._dropped
        offer = self._client_state.resume_offer
        deadline = trio.current_time() + (offer.window_s if offer is not None else 0.0)
        tried = 0
        for attempt in range(1, policy.attempts + 1):
            delay = policy.delay_s(attempt, self._rng)
            if trio.current_time() + delay > deadline:
                break  # the server has given the session up by then
            tried = attempt
            self._reporter.report(ConnectionEvent("reconnecting", attempt, delay, why))
            await trio.sleep(delay)
            self._client_state.reconnected()
            try:
                async with trio.open_nursery() as link:
                    self._link = link.cancel_scope
                    ws = await link.start(connect, await self._open(open_stream), self._patience)
                    await self._send_resume(ws)
                    self._dropped = None
                    self._reporter.report(ConnectionEvent("resumed", attempt))
                    self._log.info("session resumed (attempt {})", attempt)
                    self._go_live(link, ws, heartbeat)
                return
            except BaseExceptionGroup as group:
                error = lone_exception(group)
                if isinstance(error, ServerError) or (
                    isinstance(error, ConnectionLost) and not is_resumable(error)
                ):
                    self._give_up(attempt, error)
                    return
                if not isinstance(error, ConnectionFailed | ConnectionLost):
                    raise
                why = error
                self._ws = None
        self._give_up(tried, why)

    async def _send_resume(self, ws: WebSocketConnection) -> None:
        """Send the RESUME, read until its answer, and act on the RESUMED: ACKs the
        client may have missed, then the frames the server never saw, sent again
        before anything queued meanwhile. Raises :class:`ServerError` for a refusal
        and :class:`ConnectionLost` for a drop or a silence over the handshake limit."""
        outgoing = self._client_state.resume()
        try:
            with trio.fail_after(self._patience):
                await self._send_now(ws, outgoing)
                while True:
                    for event in self._client_state.receive(await ws.get_message()):
                        match event:
                            case ResumeRefused(error=error):
                                raise ServerError.from_message(error)
                            case Resumed(resend=resend):
                                for frame in resend:
                                    await self._send_now(ws, frame)
                                for pending in list(self._heartbeats.values()):
                                    if pending.queued.taken_at is not None:
                                        pending.queued.taken_at = trio.current_time()
                                        await self._send_now(ws, pending.queued.outgoing)
                                return
                            case _:
                                self._act(event)
        except ConnectionClosed as closed:
            raise ConnectionLost.from_close(closed.reason) from None
        except trio.TooSlowError:
            raise ConnectionLost(
                f"no answer to RESUME within {self._patience:g} s", code=None
            ) from None

    async def _open(
        self, open_stream: Callable[[], Awaitable[trio.abc.Stream | None]]
    ) -> trio.abc.Stream | None:
        """The stream for the next connection (``None``: dial the URL)."""
        try:
            return await open_stream()
        except OSError as exc:
            raise ConnectionFailed(f"could not open a connection: {exc}") from exc

    async def _send_now(self, ws: WebSocketConnection, outgoing: Outgoing) -> None:
        """Send on a connection whose writer has not started yet (the resume handshake)."""
        self._client_state.sending(outgoing)
        await ws.send_message(outgoing.text)

    def _give_up(self, attempts: int, error: AgentClientError) -> None:
        failure = ConnectionLost(f"the connection was lost and could not be resumed: {error}")
        failure.__cause__ = error
        self._reporter.report(ConnectionEvent("resume_failed", attempts, error=error))
        self._dropped = None
        self._fail(failure)
