"""The server's WebSocket, read by the task that asks for a message (no reader task).

trio-websocket reads a connection in a task of its own (``_reader_task``): it
receives bytes, feeds wsproto and puts each message on a memory channel, from
which the session's reader takes it with ``get_message()``. Every message the
client sends, an INTERRUPT included, so crosses two tasks: one pass of the
scheduler more than it needs, and one task more per connection
(``docs/performance.md``, "Tuning the hot path").

:class:`DirectReadWebSocket` is trio-websocket's connection with that task taken
out. ``get_message()`` reads the socket itself, in the caller's task: it feeds
what it receives to wsproto and returns the first whole message, at once. What
the reader task did with everything else it does here, by calling trio-websocket's
own handlers, so that close codes and reasons are exactly trio-websocket's: a ping
is answered, a pong wakes ``ping()``, the client's close frame is answered and the
TCP connection closed, a message over ``max_message_size`` closes with 1009, a
frame wsproto refuses closes with the code wsproto gives (1002, 1007).
``aclose()`` sends the close frame and then reads, discarding messages, until the
client's close frame or the end of the stream: with no reader task, the task that
closes is the one that must read the answer. trio-websocket stays the WebSocket
library for the handshake (:meth:`DirectReadWebSocket.receive_request` pumps the
same reads until wsproto's ``Request`` and hands out trio-websocket's own
:class:`~trio_websocket.WebSocketRequest`), for sending and for closing.

There is exactly one reader: the session's, or ``aclose()`` once it has stopped.
Two tasks reading at once would split the stream between them, so a second
concurrent read raises :class:`trio.BusyResourceError`.

This leans on trio-websocket's internals (``_wsproto``, ``_stream``, its event
handlers, ``_aclose``), so ``pyproject.toml`` pins trio-websocket to the 0.12
series, and ``tests/test_inbound.py`` fails if any of them changes shape.
"""

from __future__ import annotations

from typing import Final

import trio
import wsproto.utilities
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from trio_websocket._impl import RECEIVE_BYTES, CloseReason
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

__all__ = ["MAX_MESSAGES_WITHOUT_YIELD", "DirectReadWebSocket"]

#: Messages ``get_message()`` may return from one receive without yielding to the
#: scheduler. A message already received is returned at once (that is the point),
#: but a client packing hundreds of tiny messages into one read must not keep the
#: other tasks waiting until all of them are handled: after this many, one full
#: checkpoint.
MAX_MESSAGES_WITHOUT_YIELD: Final = 16


class DirectReadWebSocket(WebSocketConnection):
    """A server-side :class:`~trio_websocket.WebSocketConnection` read in the caller's
    task; see the module docstring.

    Make one per accepted stream, call :meth:`receive_request` for the handshake,
    then use it as trio-websocket's connection: ``get_message()``, ``send_message()``,
    ``aclose()``, ``closed``. Never start its ``_reader_task``.

    :param stream: the connection's byte stream (the server's cork).
    :param max_message_size: the largest message, measured by ``len()`` as
        trio-websocket measures it; a bigger one closes with 1009.
    :param receive_buffer_size: the most bytes one read asks for (trio-websocket's
        default: 4 KiB).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_message_size: int,
        receive_buffer_size: int = RECEIVE_BYTES,
    ) -> None:
        super().__init__(
            stream,
            WSConnection(ConnectionType.SERVER),
            max_message_size=max_message_size,
            receive_buffer_size=receive_buffer_size,
        )
        self._reading = False
        self._closing = False
        self._unyielded = 0

    # ------------------------------------------------------------------ handshake

    async def receive_request(self) -> WebSocketRequest | None:
        """Read the client's opening handshake; ``None`` if the client left or sent
        an HTTP request wsproto refuses (it is answered with wsproto's 400 first).

        Cancellation: a checkpoint; cancelled while waiting for bytes, nothing is
        lost (the caller bounds the handshake with its own timeout).
        """
        self._enter_read()
        try:
            while True:
                for event in self._wsproto.events():
                    if isinstance(event, Request):
                        # What trio-websocket's _handle_request_event and
                        # _get_request do, without the future between two tasks.
                        self._connection_proposal = None
                        return WebSocketRequest(self, event)
                if not await self._receive():
                    return None
        finally:
            self._reading = False

    # ------------------------------------------------------------------ reading

    async def get_message(self) -> str | bytes:
        """The client's next message, read from the socket by this task.

        Raises :class:`~trio_websocket.ConnectionClosed` once the connection is
        closed (by the client, by a protocol error, by a message too big, by
        ``aclose()``), with the reason trio-websocket would give. Messages the
        client sent before its close frame are returned first, in order.

        Cancellation: a cancellation point always (cancelled on entry, nothing was
        read); a schedule point when it has to wait for bytes, and after
        :data:`MAX_MESSAGES_WITHOUT_YIELD` messages returned without one. A message
        already received is returned without yielding. Cancelled while answering a
        ping or a close frame, the answer is lost, as it would be if trio-websocket's
        reader task were cancelled there.
        """
        if self._unyielded >= MAX_MESSAGES_WITHOUT_YIELD:
            # Before taking the next message, not after: a cancellation here loses
            # nothing (the messages wait in wsproto's buffer).
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._close_reason is not None or not self._reader_running:
            raise ConnectionClosed(self._close_reason)
        self._enter_read()
        try:
            message = await self._next_message()
        finally:
            self._reading = False
        if message is None:
            raise ConnectionClosed(self._close_reason)
        return message

    async def _next_message(self) -> str | bytes | None:
        """Handle wsproto's events, reading when none is pending, until a whole
        message (returned) or until the reader stops (``None``): trio-websocket's
        ``_reader_task`` loop, handing the message to the caller instead of a channel."""
        while self._reader_running:
            for event in self._wsproto.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    message = await self._message_part(event)
                    if message is not None:
                        return message
                elif not await self._control(event):
                    return None
                if not self._reader_running:
                    return None
            self._unyielded = 0
            if not await self._receive():
                return None
        return None

    async def _message_part(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        """Add a frame to the message being received; the message once it is whole.

        Over ``max_message_size``: trio-websocket's close with 1009 and its reason,
        and the reader stops. While ``aclose()`` waits for the client's close
        frame, messages are dropped unread.
        """
        if self._closing:
            return None
        self._message_size += len(event.data)
        if self._message_size > self._max_message_size:
            err = f"Exceeded maximum message size: {self._max_message_size} bytes"
            self._message_size = 0
            self._message_parts = []
            self._close_reason = CloseReason(1009, err)
            self._reader_running = False
            await self._send(CloseConnection(code=1009, reason=err))
            return None
        data = event.data
        if not event.message_finished:
            self._message_parts.append(data if isinstance(data, str) else bytes(data))
            return None
        message: str | bytes
        if isinstance(data, str):
            # (A text message of one frame, the common case: no join.)
            message = "".join([*self._message_parts, data]) if self._message_parts else data  # type: ignore[list-item]
        else:
            message = b"".join([*self._message_parts, data])  # type: ignore[list-item]
        self._message_parts = []
        self._message_size = 0
        self._unyielded += 1
        return message

    async def _control(self, event: Event) -> bool:
        """Handle a control event with trio-websocket's own handler; ``False`` once
        the reader has stopped (a close frame, a connection that broke on the answer)."""
        try:
            if isinstance(event, CloseConnection):
                await self._handle_close_connection_event(event)
                self._reader_running = False
                return False
            if isinstance(event, Ping):
                if self._wsproto.state is ConnectionState.OPEN:
                    # (Not while closing: wsproto refuses a pong after a close frame.)
                    await self._handle_ping_event(event)
            elif isinstance(event, Pong):
                await self._handle_pong_event(event)
            # Anything else (a second Request, client-side events) cannot come
            # from wsproto on an open server connection: ignored.
        except ConnectionClosed:
            # The answer found the connection broken: trio-websocket's
            # _abort_web_socket has recorded 1006.
            self._reader_running = False
            return False
        return True

    async def _receive(self) -> bool:
        """One read from the stream into wsproto; ``False`` once the reader has
        stopped (the stream ended or broke, or wsproto refused what came)."""
        try:
            data = await self._stream.receive_some(self._receive_buffer_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._abort_web_socket()
            return False
        if not data:
            # The TCP connection ended before the WebSocket closed: 1006.
            if self._wsproto.state is not ConnectionState.CLOSED:
                await self._abort_web_socket()
            self._reader_running = False
            return False
        if self._wsproto.state is not ConnectionState.CLOSED:
            try:
                self._wsproto.receive_data(bytes(data) if isinstance(data, bytearray) else data)
            except wsproto.utilities.RemoteProtocolError as err:
                # As trio-websocket: wsproto's answer (a 400 to a bad handshake), then
                # the stream is closed.
                try:
                    if err.event_hint:
                        await self._send(err.event_hint)
                except ConnectionClosed:
                    pass
                await self._close_stream()
                return False
        return True

    def _enter_read(self) -> None:
        if self._reading:
            raise trio.BusyResourceError("another task is already reading this WebSocket")
        self._reading = True

    # ------------------------------------------------------------------ closing

    async def _aclose(self, code: int, reason: str | None) -> None:
        """trio-websocket's ``_aclose`` (``aclose()`` calls it), reading the close
        handshake's answer itself: send the close frame, then read (messages are
        dropped) until the client's close frame or the end of the stream, then close
        the stream.

        Cancellation: as trio-websocket's: cancelled while waiting for the client's
        answer, the stream is closed anyway (the caller bounds the wait).
        """
        if self._close_reason:
            return
        try:
            if self._wsproto.state is ConnectionState.OPEN:
                # Our side closes: the local reason is "normal", as trio-websocket's.
                self._close_reason = CloseReason(1000, None)
                await self._send(CloseConnection(code=code, reason=reason))
            elif self._wsproto.state in (ConnectionState.CONNECTING, ConnectionState.REJECTING):
                self._close_handshake.set()
            self._closing = True
            if not self._reading:
                self._enter_read()
                try:
                    while self._reader_running and not self._close_handshake.is_set():
                        await self._next_message()
                finally:
                    self._reading = False
        except ConnectionClosed:
            pass
        finally:
            await self._close_stream()
