"""A RESUME whose token the store says was spent by a node that still lives.

The store spends a token on the RESUME that presents it, so that of two RESUMEs
racing with one token exactly one wins. A node can be killed after it spent a
client's token and before its RESUMED (with the next token) reached the client:
the client then holds a spent token and, on its next RESUME, the store answers
``SPENT`` (the node that spent it still holds its lease). Such a node is dead but
not yet known to be: its lease runs out within ``--node-lease-s``. So the RESUME
waits that long, asking the store again every third of the lease: once the lease
is gone, the store accepts the token again (``OK``, atomically: one winner); if
the node lives on, it won a race and the RESUME is denied. ``docs/cluster.md``,
"A node dies".
"""

from __future__ import annotations

import trio

from trio_agent.cluster.store import ClusterStore, TakeOver, TakeOverVerdict

__all__ = ["SPENT_WAIT_MARGIN_S", "take_over_waiting_for_spender"]

#: How much longer than a lease a RESUME waits for the node that spent its token to
#: be known dead (the lease's last refresh may have come just before the kill).
SPENT_WAIT_MARGIN_S = 0.5


async def take_over_waiting_for_spender(
    store: ClusterStore,
    session_id: str,
    *,
    token_digest: str,
    new_token_digest: str,
    node_id: str,
    max_denied: int,
    lease_s: float,
) -> TakeOver:
    """:meth:`ClusterStore.take_over`, asked again while it answers ``SPENT``, for at
    most ``lease_s`` + :data:`SPENT_WAIT_MARGIN_S`; then ``DENIED`` (also when the
    session ended meanwhile: the token was spent all the same). Never ``SPENT``.

    Cancellation: each wait and each call is a checkpoint; cancelled, the token is
    spent only if a call that had answered ``OK`` spent it (then the caller's
    cancellation ends the RESUME as any cancelled take-over does).
    """
    deadline = trio.current_time() + lease_s + SPENT_WAIT_MARGIN_S
    spent_once = False
    while True:
        taken = await store.take_over(
            session_id,
            token_digest=token_digest,
            new_token_digest=new_token_digest,
            node_id=node_id,
            max_denied=max_denied,
        )
        if taken.verdict is TakeOverVerdict.UNKNOWN and spent_once:
            # The session the winner took ended meanwhile: the token was still spent.
            return TakeOver(TakeOverVerdict.DENIED)
        if taken.verdict is not TakeOverVerdict.SPENT:
            return taken
        spent_once = True
        left = deadline - trio.current_time()
        if left <= 0:
            return TakeOver(TakeOverVerdict.DENIED)
        # Polling a lease that expires in Redis: nothing tells this node when.
        await trio.sleep(min(lease_s / 3, left))
