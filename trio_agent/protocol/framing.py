"""WebSocket message frames as this server writes them (RFC 6455, section 5.2).

The session's writer frames its messages itself and hands them to the
:class:`~trio_agent.server.cork.CorkableStream` under the connection, so that a batch
of frames costs one system call and no per-message lock (see
:mod:`trio_agent.server.cork`). trio-websocket keeps everything else: the handshake,
reading, ping and pong, the closing handshake.

A server's frames are simple: never masked, and this server sends every
message whole (FIN set, no fragments) and negotiates no extension (so no
compression and no reserved bits). That leaves the opcode and the length, and
:func:`websocket_frame` gives the same bytes as wsproto's framing (a test
checks it across the length encodings). Pure; no I/O.
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
