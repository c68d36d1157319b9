"""Why a session ends, as the reader and the writer record it.

The first reason recorded wins (:meth:`~trio_agent.server.session.Session.run`
closes with it); ``docs/architecture.md`` describes how a session closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from trio_agent.protocol.messages import CloseCode


@dataclass(frozen=True)
class SessionEnd:
    """Why a session ends, and how.

    ``code`` is the close code to send, or ``None`` when the connection is already
    gone. ``flush`` asks to write what is queued (bounded by the shutdown grace)
    before closing. ``resumable``: the connection was lost, not ended on purpose
    (no close frame, or one with a code other than 1000): when resumption is on,
    only the connection ends, and the session waits for a RESUME (v1.2).
    """

    reason: str
    code: CloseCode | None = None
    flush: bool = False
    resumable: bool = False


#: Close codes after which a session may be resumed (v1.2): the connection broke
#: (1006: no close frame), or the client or a proxy is going away or in trouble.
#: A close with 1000 is the client's decision to end; one that names a fault of the
#: client's traffic (1002, 1003, 1007, 1008, 1009, 1010) is the server's.
RESUMABLE_CLOSE_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})


def close_is_resumable(code: int | None) -> bool:
    """Whether a connection that ended with ``code`` (``None``: none was read) leaves
    its session waiting for a RESUME; application codes (4000-4999) do too."""
    return code is None or code in RESUMABLE_CLOSE_CODES or 4000 <= code <= 4999
