"""The mirror: a node's frames and session facts, on their way to the store.

A session's writer calls :meth:`Mirror.add` synchronously as it writes each frame;
the mirror's own task sends what has queued to the store in one round trip (a
pipeline per batch), in order. The socket write never waits for the store: the
queue is bounded, and when it is full a session's frames are not queued but the
session is marked *lost* to the cluster (its stream in the store would have a
hole, so it is deleted as soon as the store can be reached: a resume on another
node then gets ``RESUME_UNKNOWN`` rather than a reply with a gap; a resume on
this node still works from its own replay buffer). ``docs/cluster.md``.

Writes are sent at most every :data:`COALESCE_S`, so that a reply streaming flat
out costs one round trip per 20 ms, not per frame. Two kinds of item do not wait
for that tick: a job (a session opened, detached, closed: rare, and each its own
round trip anyway), and above all an *urgent* job (:meth:`Mirror.add_urgent`):
another node that takes a session over waits for this node's "flushed", which is
queued behind every frame this node wrote, and a tick or two of coalescing there
was most of a resume's time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable

import trio
from loguru import logger

from trio_agent.cluster.store import (
    ClusterStore,
    FrameWrite,
    RequestEnded,
    RequestStarted,
    SessionSeen,
    StoreUnavailable,
    Write,
)

__all__ = ["Job", "Mirror", "UrgentJob"]

#: A call on the store that cannot be batched (e.g. open a session's record).
Job = Callable[[], Awaitable[None]]

#: The most writes sent in one round trip.
_BATCH = 512
#: The least time between two round trips: writes gather meanwhile. A round trip
#: costs the node far more CPU than a frame does, so a reply streaming flat out is
#: sent 20 ms of frames at a time (one command per session). This is most of the mirror's lag.
COALESCE_S = 0.02
#: How long to wait before trying a store that failed again: doubled up to the max.
_BACKOFF_S = 0.1
_BACKOFF_MAX_S = 2.0


_WRITES = (FrameWrite, RequestStarted, RequestEnded, SessionSeen)


def _session_of(item: Write | Job) -> str | None:
    return item.session_id if isinstance(item, _WRITES) else None


class UrgentJob:
    """A job somebody waits for: it and everything queued before it are sent at once,
    each round trip right after the last, without waiting for the coalescing tick."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self) -> Awaitable[None]:
        return self.job()


class Mirror:
    """A bounded queue to the store, and the task that empties it.

    :param store: where the writes go.
    :param node_id: this node: a lost session's keys are deleted only while it owns
        the session.
    :param max_queued: the most writes and jobs waiting; past it, sessions are lost
        to the cluster rather than slowing their replies.
    :param max_bytes: each session stream's bound in bytes (the oldest frames go first).
    :param ttl_s: the time to live of every key a write touches.
    :param on_trouble: told the store's error (or ``None`` once it answers again).
    """

    def __init__(
        self,
        store: ClusterStore,
        *,
        node_id: str,
        max_queued: int,
        max_bytes: int,
        ttl_s: float,
        on_trouble: Callable[[str | None], None],
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._max_queued = max_queued
        self.max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._on_trouble = on_trouble
        self._queue: deque[Write | Job] = deque()
        #: Since when the queue has held something (about its oldest write's age).
        self._busy_since = 0.0
        self._waiting = trio.Event()
        self._empty = trio.Event()
        self._empty.set()
        #: Urgent jobs queued: while there is one, no round trip waits for the tick.
        self._urgent_queued = 0
        #: The wait for the next coalescing tick, while the task is in it.
        self._tick: trio.CancelScope | None = None
        #: Sessions whose frames could not all be queued: deleted from the store.
        self.lost: set[str] = set()
        self._lost_to_delete: list[str] = []
        self.written_total = 0
        self.dropped_total = 0
        self.lag_s = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def add(self, item: Write | Job, session_id: str | None = None) -> bool:
        """Queue ``item``; synchronous, never blocks. Returns ``False`` (and marks the
        session lost) when the queue is full or the session is lost already."""
        session_id = session_id if session_id is not None else _session_of(item)
        if session_id is not None and session_id in self.lost:
            self.dropped_total += 1
            return False
        if len(self._queue) >= self._max_queued:
            self.dropped_total += 1
            if session_id is not None:
                self.lost.add(session_id)
                self._lost_to_delete.append(session_id)
                logger.warning(
                    "mirror queue full: session lost to the cluster (resume only on this node)",
                    session_id=session_id,
                    queued=len(self._queue),
                )
            return False
        if not self._queue:
            self._busy_since = trio.current_time()
        self._queue.append(item)
        if self._empty.is_set():
            self._empty = trio.Event()
        self._waiting.set()
        return True

    def add_urgent(self, job: Job) -> bool:
        """Queue ``job`` behind every write queued so far, and have them all sent now:
        the mirror's task stops waiting for its coalescing tick (if it is in it) and
        sends round trip after round trip until ``job`` has run. Synchronous, never
        blocks; ``False`` when the queue is full (the job is not queued).

        When nothing is queued, ``job`` runs at the mirror task's next step: "nothing
        is waiting to be stored" is answered at once."""
        if not self.add(UrgentJob(job)):
            return False
        self._urgent_queued += 1
        if self._tick is not None:
            self._tick.cancel()
        return True

    async def wait_empty(self) -> None:
        """Return once everything queued has been written to the store."""
        await self._empty.wait()

    async def run(self) -> None:
        """Send what is queued, in order, until cancelled; retry with backoff while the
        store is unreachable (nothing queued is dropped then: the bound does that)."""
        backoff = _BACKOFF_S
        sent_at = -math.inf
        while True:
            if not self._queue and not self._lost_to_delete:
                self._waiting = trio.Event()
                self.lag_s = 0.0
                self._empty.set()
                await self._waiting.wait()
            if self._must_wait_for_tick():
                # Cancelled by add_urgent: an urgent job waits for nothing.
                with trio.CancelScope() as self._tick:
                    await trio.sleep_until(sent_at + COALESCE_S)
                self._tick = None
            if self._head_is_writes():
                sent_at = trio.current_time()
            try:
                await self._send_some()
            except StoreUnavailable as exc:
                self._on_trouble(str(exc) or type(exc).__name__)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_S
            self._on_trouble(None)

    def _head_is_writes(self) -> bool:
        return (
            not self._lost_to_delete and bool(self._queue) and isinstance(self._queue[0], _WRITES)
        )

    def _must_wait_for_tick(self) -> bool:
        """Only a batch of writes waits for the tick, and only while nothing urgent is
        queued behind it: a job goes at once (it is rare, and costs its own round trip
        however long it waits)."""
        return self._urgent_queued == 0 and self._head_is_writes()

    async def _send_some(self) -> None:
        """One round trip: the lost sessions' deletions, a job, or a batch of writes."""
        while self._lost_to_delete:
            await self._store.close_session(self._lost_to_delete[0], owner=self._node_id)
            self._lost_to_delete.pop(0)
        if not self._queue:
            return
        started = trio.current_time()
        self.lag_s = started - self._busy_since
        head = self._queue[0]
        if not isinstance(head, _WRITES):
            await head()
            self._queue.popleft()
            self.written_total += 1
            if isinstance(head, UrgentJob):
                self._urgent_queued -= 1
        else:
            batch: list[Write] = []
            for queued in self._queue:
                if len(batch) >= _BATCH or not isinstance(queued, _WRITES):
                    break
                batch.append(queued)
            await self._store.write(batch, max_bytes=self.max_bytes, ttl_s=self._ttl_s)
            for _ in batch:
                self._queue.popleft()
            self.written_total += len(batch)
        # What is left was queued, about, since this round trip began (lag is a gauge).
        self._busy_since = started
