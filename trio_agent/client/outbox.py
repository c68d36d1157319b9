"""The client's outbox: the frames waiting for the one task that sends.

Callers queue a frame and wait until it is on the socket; the writer task takes
frames in order. docs/client.md ("Lifetime, cancellation and errors") says why a
single writer keeps a cancelled caller from leaving half a frame on the wire.
"""

from __future__ import annotations

from collections import deque

import trio

from trio_agent.client.state import Outgoing

__all__ = ["Outbox", "QueuedFrame"]


class QueuedFrame:
    """A frame in the outbox; ``written`` is set once it is on the socket."""

    __slots__ = ("dropped", "outgoing", "taken_at", "written")

    def __init__(self, outgoing: Outgoing) -> None:
        self.outgoing = outgoing
        self.written = trio.Event()
        #: ``trio.current_time()`` when the writer took it (``None``: still queued).
        self.taken_at: float | None = None
        #: True when the client closed before it could be written.
        self.dropped = False


class Outbox:
    """The frames not yet taken by the writer, in the order they will be sent.

    Only :meth:`take` waits; everything else is synchronous, so queueing and
    withdrawing a frame never blocks a caller.
    """

    def __init__(self) -> None:
        self._frames: deque[QueuedFrame] = deque()
        self._ready = trio.lowlevel.ParkingLot()

    def put(self, outgoing: Outgoing) -> QueuedFrame:
        """Queue ``outgoing`` behind the frames already waiting."""
        queued = QueuedFrame(outgoing)
        self._frames.append(queued)
        self._ready.unpark()
        return queued

    def remove(self, queued: QueuedFrame) -> None:
        """Take back a frame the writer has not taken yet."""
        self._frames.remove(queued)

    async def take(self) -> QueuedFrame:
        """Wait for a frame, take the oldest and stamp ``taken_at``. Cancel-safe: a
        cancelled call takes nothing."""
        while not self._frames:
            await self._ready.park()
        queued = self._frames.popleft()
        queued.taken_at = trio.current_time()
        return queued

    def drop_all(self) -> None:
        """The client is closing: mark every waiting frame dropped and wake its caller."""
        while self._frames:
            queued = self._frames.popleft()
            queued.dropped = True
            queued.written.set()
