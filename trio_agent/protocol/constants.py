"""Constants of the wire that more than one side must agree on, defined once.

The server (admission, redaction), the Python client and the browser client
(``static/agent-client.js``, checked against this module by a test) read these.
``docs/protocol.md`` documents them.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

#: The subprotocol the server selects: protocol v1 of trio-agent.
SUBPROTOCOL: Final = "trio-agent.v1"
#: A browser cannot set headers on a WebSocket handshake, so it may offer the token
#: as a subprotocol ``trio-agent.token.<TOKEN>`` next to :data:`SUBPROTOCOL`. The
#: server never selects (echoes) it.
TOKEN_SUBPROTOCOL_PREFIX: Final = "trio-agent.token."
#: The query parameter that may carry the token (``/ws?token=...``).
TOKEN_QUERY_PARAMETER: Final = "token"

#: Characters a token may use: an RFC 7230 ``token``, so that it can travel in a
#: header, a subprotocol and (percent-encoded where needed) a query string.
TOKEN_CHARACTERS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


#: Where ``scripts/serve`` listens unless told otherwise, and so where the clients
#: connect by default.
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
DEFAULT_PATH: Final = "/ws"
DEFAULT_URL: Final = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}{DEFAULT_PATH}"


class FrameKind(Enum):
    """The kinds of frame a server writes, as its lanes queue them and metrics count them."""

    CONTROL = "control"
    STREAM = "stream"
    #: A binary AUDIO chunk: a stream-lane frame like STREAM, dropped the same way.
    AUDIO = "audio"
    DONE = "done"
