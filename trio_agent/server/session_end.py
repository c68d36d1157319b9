"""Why a session ends, as the reader and the writer record it.

The first reason recorded wins (:meth:`~trio_agent.server.session.Session.run`
closes with it); ``docs/architecture.md`` describes how a session closes.
"""

from __future__ import annotations

from dataclasses import dataclass

from trio_agent.protocol.messages import CloseCode


@dataclass(frozen=True)
class SessionEnd:
    """Why a session ends, and how.

    ``code`` is the close code to send, or ``None`` when the connection is already
    gone. ``flush`` asks to write what is queued (bounded by the shutdown grace)
    before closing.
    """

    reason: str
    code: CloseCode | None = None
    flush: bool = False
