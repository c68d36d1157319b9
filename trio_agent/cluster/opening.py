"""Sessions opened on this node whose record the store does not hold yet.

A client may RESUME on any node the moment it has its SESSION frame (its
connection can drop right after). If the frame went out before the store had the
session's record, which the mirror writes asynchronously, another node would
answer ``RESUME_UNKNOWN`` for a session that exists. So a new session's SESSION
frame waits (:meth:`Openings.wait_stored`) until the mirror has written the
record, bounded, and not at all while the store is unreachable (then only this
node can resume it, as ``docs/cluster.md`` says for "Redis trouble").
"""

from __future__ import annotations

from typing import Final

import trio

__all__ = ["OPEN_WAIT_MAX_S", "Openings"]

#: The longest a new session's SESSION frame waits for the store to hold its record.
OPEN_WAIT_MAX_S: Final = 2.0


class Openings:
    """The sessions opened here whose record is on its way to the store."""

    def __init__(self) -> None:
        self._settled: dict[str, trio.Event] = {}

    def opened(self, session_id: str) -> None:
        """The session's record was queued for the store. Synchronous."""
        self._settled[session_id] = trio.Event()

    def settle(self, session_id: str) -> None:
        """Its record is stored (or never will be: the queue was full, the session
        closed): its SESSION frame waits no longer. Synchronous."""
        settled = self._settled.pop(session_id, None)
        if settled is not None:
            settled.set()

    def settle_all(self) -> None:
        """The store is unreachable: no SESSION frame waits for it. Synchronous."""
        for settled in self._settled.values():
            settled.set()
        self._settled.clear()

    async def wait_stored(self, session_id: str) -> None:
        """Return once the session's record is stored or settled otherwise; at most
        :data:`OPEN_WAIT_MAX_S`. A checkpoint; cancelled, nothing changes."""
        settled = self._settled.get(session_id)
        if settled is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(OPEN_WAIT_MAX_S):
            await settled.wait()
