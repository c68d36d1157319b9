"""Writing a session anew into a store that lost it (restarted empty, or unreachable
while frames were written). Used by :mod:`trio_agent.cluster.node` when the store
answers again; ``docs/cluster.md`` ("Redis trouble")."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from loguru import logger

from trio_agent.cluster.store import (
    ClusterStore,
    FrameWrite,
    RequestEnded,
    RequestStarted,
    Write,
)
from trio_agent.cluster.stream_replay import STORED_SORT
from trio_agent.server.replay import FrameSort
from trio_agent.server.resume_book import ResumeBook

if TYPE_CHECKING:
    from trio_agent.cluster.mirror import Mirror
    from trio_agent.server.session import Session

__all__ = ["rewrite_held_sessions", "rewrite_session"]


def rewrite_session(
    store: ClusterStore,
    session: Session,
    *,
    book: ResumeBook,
    node_id: str,
    epoch: int,
    max_bytes: int,
    ttl_s: float,
) -> Callable[[], Awaitable[None]]:
    """A job for the mirror: replace whatever the store holds of ``session`` by what
    this node holds (its record at ``epoch``, its running requests, its replay
    buffer, its resume window); nothing when the session was handed on meanwhile,
    as this node knows (``moved_to``) or as the store says: another node took it
    over while the "moved" message could not reach this one (the store unreachable
    from here, the subscription broken). The record is written only if the store
    holds no newer owner, atomically (``OPEN_SESSION``), so the new owner's frames
    and token are never replaced by this node's older ones; the session then moves
    away when this node next looks at the store's owner (``ClusterNode``), as on a
    lost "moved"."""
    session_id = session.session_id

    async def rewrite() -> None:
        digest = book.digest(session_id)
        if digest is None or session.replay is None or session.moved_to is not None:
            return
        if not await store.open_session(
            session_id, owner=node_id, token_digest=digest, ttl_s=ttl_s, epoch=epoch
        ):
            logger.info(
                "not written anew: another node took the session over", session_id=session_id
            )
            return
        batch: list[Write] = [
            RequestStarted(session_id, record.request_id, record.runs_on or node_id)
            for record in session.registry.running()
        ]
        for request_id, sort, seq, data in session.replay.held():
            frames = _done_frames(data) if sort is FrameSort.DONE else -1
            batch.append(
                FrameWrite(session_id, request_id, STORED_SORT[sort], seq, data, node_id, frames)
            )
            if sort is FrameSort.DONE:
                batch.append(RequestEnded(session_id, request_id))
        await store.write(batch, max_bytes=max_bytes, ttl_s=ttl_s)
        deadline = book.deadline(session_id)
        if deadline is not None:
            await store.detach(
                session_id, window_s=max(0.0, deadline - trio.current_time()), owner=node_id
            )

    return rewrite


def rewrite_held_sessions(
    mirror: Mirror,
    sessions: list[Session],
    store: ClusterStore,
    *,
    book: ResumeBook,
    node_id: str,
    epochs: dict[str, int],
    ttl_s: float,
) -> None:
    """The store is back: it may have lost what it held (a restart), and writes
    failed meanwhile. Queue on ``mirror`` a rewrite of each session held here, from
    its replay buffer, so it can be resumed on any node again (and a session lost to
    the cluster comes back). Queued behind the writes already waiting, which it
    replaces. Synchronous: nothing is awaited here."""
    for session in sessions:
        if session.moved_to is None and not session.ended and session.replay is not None:
            mirror.lost.discard(session.session_id)
            mirror.add(
                rewrite_session(
                    store,
                    session,
                    book=book,
                    node_id=node_id,
                    epoch=epochs.get(session.session_id, 1),
                    max_bytes=mirror.max_bytes,
                    ttl_s=ttl_s,
                ),
                session.session_id,
            )


def _done_frames(data: str | bytes) -> int:
    """A rendered DONE's ``payload.frames`` (-1 when it cannot be read)."""
    try:
        frames = json.loads(data)["payload"]["frames"]
    except (ValueError, KeyError, TypeError):
        return -1
    return frames if isinstance(frames, int) else -1
