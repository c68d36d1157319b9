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


#: The longest HTTP upgrade request head the counter skips (trio-agent's HTTP front
#: refuses longer ones before the upgrade).
MAX_HTTP_HEAD: Final = 64 * 1024
#: Opcodes RFC 6455 defines: continuation, text, binary; close, ping, pong.
_OPCODES: Final = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})


class FrameCounter:
    """Counts the WebSocket frames a client sends, from the raw bytes (RFC 6455, 5.2).

    Every frame counts, whatever it is: a data frame, an empty continuation, a
    ping. Only the headers are read; payloads are skipped by arithmetic, so
    counting costs a few operations per frame and nothing per payload byte.
    Feed it the bytes in any pieces; :meth:`feed` says how many frame headers they
    completed.

    It also adds up the payload lengths of the data frames of each message, as
    their headers announce them, so a message too big in *bytes* is known before
    its payload arrives (trio-websocket measures a text message in characters).

    The count must stay in step with the real parser (wsproto), or a client could
    hide frames inside what the counter takes for a payload. So anything that
    could put them out of step makes :attr:`malformed` true, after which nothing
    more is counted and the caller drops the connection: an upgrade request with
    a body (``Content-Length`` other than 0, or ``Transfer-Encoding``), and a frame
    wsproto would refuse anyway (unmasked, an RSV bit set, an unknown opcode, a
    control frame longer than 125 bytes).

    :param after_http_head: the bytes begin with the HTTP upgrade request; skip it
        (up to the blank line that ends it, as h11 finds it: ``\\n\\r\\n`` or
        ``\\n\\n``) before counting.
    """

    __slots__ = (
        "_head",
        "_http_head",
        "_in_http_head",
        "_payload_left",
        "frames",
        "largest_message",
        "malformed",
        "message_bytes",
    )

    def __init__(self, *, after_http_head: bool = False) -> None:
        self._in_http_head = after_http_head
        self._http_head = bytearray()  # the HTTP head read so far
        self._head = bytearray()  # the frame header read so far
        self._payload_left = 0
        #: Frame headers completed since the start.
        self.frames = 0
        #: Payload bytes announced so far by the data frames of the current message.
        self.message_bytes = 0
        #: The most payload bytes one message has announced (the current one included).
        self.largest_message = 0
        #: Why the bytes cannot be counted in step with the real parser, if they cannot.
        self.malformed: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Read ``data``; return how many frame headers it completed."""
        view = memoryview(data)
        if self._in_http_head:
            view = self._skip_http_head(view)
        before = self.frames
        pos, end = 0, len(view)
        while pos < end and self.malformed is None:
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
            size = 2 + (2 if short == 126 else 8 if short == 127 else 0) + 4
            if len(head) < size:
                continue
            self._frame_header(head, short)
            head.clear()
        return self.frames - before

    def _frame_header(self, head: bytearray, short: int) -> None:
        """A whole frame header: count it, check it, and skip its payload."""
        if short == 126:
            length = int.from_bytes(head[2:4], "big")
        elif short == 127:
            length = int.from_bytes(head[2:10], "big")
        else:
            length = short
        opcode = head[0] & 0x0F
        self.frames += 1
        self._payload_left = length
        if not head[1] & 0x80:
            self.malformed = "an unmasked client frame"
        elif head[0] & 0x70:
            self.malformed = "a frame with an RSV bit set"
        elif opcode not in _OPCODES:
            self.malformed = f"a frame with the unknown opcode {opcode:#x}"
        elif opcode & 0x08:  # a control frame
            if length > 125 or not head[0] & 0x80:
                self.malformed = "a control frame longer than 125 bytes, or fragmented"
        else:
            self.message_bytes += length
            self.largest_message = max(self.largest_message, self.message_bytes)
            if head[0] & 0x80:  # FIN: the message is complete
                self.message_bytes = 0

    def _skip_http_head(self, view: memoryview) -> memoryview:
        """What follows the HTTP head in ``view`` (nothing while the head goes on)."""
        start = max(0, len(self._http_head) - 2)
        self._http_head += view
        seen = self._http_head
        ends = [at + len(m) for m in (b"\n\r\n", b"\n\n") if (at := seen.find(m, start)) >= 0]
        if not ends:
            if len(seen) > MAX_HTTP_HEAD:
                self.malformed = "an HTTP head too long"
            return view[:0]
        end = min(ends)
        self._in_http_head = False
        rest = memoryview(bytes(seen[end:]))
        head = bytes(seen[:end]).lower()
        self._http_head = bytearray()
        if b"\ntransfer-encoding:" in head or any(
            line.split(b":", 1)[1].strip() not in (b"", b"0")
            for line in head.split(b"\n")
            if line.startswith(b"content-length:")
        ):
            self.malformed = "an upgrade request with a body"
        return rest
