"""The coredis client the store uses: bounded calls, no retries, and a pool that
gives back the slot of a connection that breaks (see :class:`SlotKeepingPool`).

Its own module because it works around coredis 6.9's pool; ``docs/cluster.md``
("Redis trouble") says what the node does while the store is unreachable.
"""

from __future__ import annotations

from typing import Any

import coredis
from coredis.pool import ConnectionPool
from coredis.retry import NoRetryPolicy

__all__ = ["SlotKeepingPool", "redis_client"]


class SlotKeepingPool(ConnectionPool[Any]):
    """coredis's connection pool, giving back the slot of a connection that breaks.

    coredis 6.9 puts a released connection back only while it is usable, and a
    connection that broke while it was leased (a cancelled ``XREAD BLOCK``, a
    pipeline cut by a dead server) never gives its slot back: after
    ``max_connections`` of them every later call waits for a connection forever.
    Releasing such a connection here frees its slot, so a fresh one is made.
    """

    def release(self, connection: Any) -> None:
        super().release(connection)
        slots = self._available_connections  # private to coredis: tests/test_redis_store.py
        if not connection.usable and not slots.full():  # checks this still holds
            connection.invalidate()
            slots.append_nowait(None)


def redis_client(
    url: str, *, timeout_s: float, reply_timeout_s: float | None, size: int
) -> coredis.Redis[bytes]:
    """A bytes-in, bytes-out client whose calls fail rather than wait (no retries: the
    node retries with backoff, and a retried Lua script could apply twice)."""
    pool = SlotKeepingPool.from_url(
        url,
        decode_responses=False,
        connect_timeout=timeout_s,
        stream_timeout=reply_timeout_s,
        max_connections=size,
        timeout=2 * timeout_s,
    )
    return coredis.Redis(connection_pool=pool, decode_responses=False, retry_policy=NoRetryPolicy())
