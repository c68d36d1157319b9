"""WebSocket message frames as this server writes them (RFC 6455, section 5.2). Pure; no I/O.

The session's writer frames a batch itself so that it leaves in one socket write
(:mod:`trio_agent.server.cork`; docs/performance.md explains the batching).
"""

from __future__ import annotations

import struct
from typing import Final

#: FIN bit plus opcode: a whole text message, a whole binary message.
_TEXT: Final = 0x81
_BINARY: Final = 0x82


def websocket_frame(message: str | bytes) -> bytes:
    """The frame of one whole, unmasked message: text for ``str``, binary for ``bytes``.

    Raises :class:`UnicodeEncodeError` for text that UTF-8 cannot carry (a lone
    surrogate), as wsproto does.
    """
    if isinstance(message, str):
        first, payload = _TEXT, message.encode("utf-8")
    else:
        first, payload = _BINARY, message
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


#: A close frame's opcode with the FIN bit.
_CLOSE: Final = 0x88


def close_frame(code: int, reason: str = "") -> bytes:
    """The unmasked close frame of ``code`` and ``reason`` (cut to fit the 125 bytes a
    control frame may carry)."""
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return bytes((_CLOSE, len(payload))) + payload


class FrameCounter:
    """Counts the WebSocket frames a peer sends, from the raw bytes (RFC 6455, 5.2).

    Every frame counts, whatever it is: a data frame, an empty continuation, a
    ping. Only the headers are read; payloads are skipped by arithmetic, so
    counting costs a few operations per frame and nothing per payload byte.
    Feed it the bytes in any pieces; :meth:`feed` says how many frame headers they
    completed.

    It also adds up the payload lengths of the data frames of each message, as
    their headers announce them, so a message too big in *bytes* is known before
    its payload arrives (trio-websocket measures a text message in characters).

    :param after_http_head: the bytes begin with the HTTP upgrade request; skip it
        (up to the blank line that ends it, as h11 finds it: ``\\n\\r\\n`` or
        ``\\n\\n``) before counting.
    """

    __slots__ = (
        "_head",
        "_in_http_head",
        "_payload_left",
        "_tail",
        "frames",
        "largest_message",
        "message_bytes",
    )

    def __init__(self, *, after_http_head: bool = False) -> None:
        self._in_http_head = after_http_head
        self._tail = b""  # the last bytes of the HTTP head seen so far
        self._head = bytearray()  # the frame header read so far
        self._payload_left = 0
        #: Frame headers completed since the start.
        self.frames = 0
        #: Payload bytes announced so far by the data frames of the current message.
        self.message_bytes = 0
        #: The most payload bytes one message has announced (the current one included).
        self.largest_message = 0

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Read ``data``; return how many frame headers it completed."""
        view = memoryview(data)
        if self._in_http_head:
            view = self._skip_http_head(view)
        before = self.frames
        pos, end = 0, len(view)
        while pos < end:
            if self._payload_left:
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                continue
            head = self._head
            head.append(view[pos])
            pos += 1
            if len(head) < 2:
                continue
            short = head[1] & 0x7F
            size = (
                2 + (2 if short == 126 else 8 if short == 127 else 0) + (4 if head[1] & 0x80 else 0)
            )
            if len(head) < size:
                continue
            if short == 126:
                length = int.from_bytes(head[2:4], "big")
            elif short == 127:
                length = int.from_bytes(head[2:10], "big")
            else:
                length = short
            self.frames += 1
            self._payload_left = length
            if not head[0] & 0x08:  # a data frame (opcode 0-7), not a control frame
                self.message_bytes += length
                self.largest_message = max(self.largest_message, self.message_bytes)
                if head[0] & 0x80:  # FIN: the message is complete
                    self.message_bytes = 0
            head.clear()
        return self.frames - before

    def _skip_http_head(self, view: memoryview) -> memoryview:
        """What follows the HTTP head in ``view`` (nothing while the head goes on)."""
        seen = self._tail + bytes(view)
        ends = [at + len(m) for m in (b"\n\r\n", b"\n\n") if (at := seen.find(m)) >= 0]
        if not ends:
            self._tail = seen[-2:]
            return view[:0]
        self._in_http_head = False
        self._tail = b""
        return memoryview(seen)[min(ends) :]
