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
