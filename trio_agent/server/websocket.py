"""The server side of a WebSocket, with its message size limit counted in bytes.

trio-websocket bounds a message by adding up ``len()`` of its decoded parts: bytes
for a binary message, but *characters* for a text message, so a text message of
4-byte characters could be four times ``max_message_bytes`` on the wire, and as
much in memory (an emoji is one character). :class:`ByteCountingWebSocket` counts
each text part by its UTF-8 size instead, the unit of every size in
``docs/security.md``. ASCII text, the usual case, costs nothing more: its size is
its length.
"""

from __future__ import annotations

import trio
from trio_websocket import WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, TextMessage


class ByteCountingWebSocket(WebSocketConnection):
    """A :class:`trio_websocket.WebSocketConnection` whose ``max_message_size``
    counts UTF-8 bytes for text messages too (the limit is checked, and the
    connection closed with 1009, as trio-websocket does it)."""

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        if isinstance(event, TextMessage) and not event.data.isascii():
            # trio-websocket adds len(event.data) characters; add the other bytes.
            self._message_size += len(event.data.encode("utf-8")) - len(event.data)
        await super()._handle_message_event(event)


async def open_server_websocket(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_message_bytes: int
) -> WebSocketRequest:
    """Read a WebSocket handshake from ``stream``: ``trio_websocket.wrap_server_stream``
    with a :class:`ByteCountingWebSocket`.

    The connection's reader task runs in ``nursery``. Cancellable: a cancelled wait
    leaves the reader task to the nursery, which its caller cancels.
    """
    connection = ByteCountingWebSocket(
        stream,
        WSConnection(ConnectionType.SERVER),
        max_message_size=max_message_bytes,
    )
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()
