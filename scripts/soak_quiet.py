"""The soak's quiet phase: the attacks that need the server's whole attention, alone.

Two attacks measure the server at its fastest, not at its busiest: a pack of
non-reading echo clients fills a connection's lanes only as fast as the server
reads their 64 KB frames, and a HEARTBEAT burst drains the rate limit only if
the server reads it before the bucket refills. In the mix, with a busy event
loop reading each connection 4 KiB per turn, neither gets there reliably; so
before the mix, on the idle server, they run alone (no other client, not even
the canary): the HEARTBEAT burst ``HEARTBEAT_ROUNDS`` times, then one echo pack,
while a sampler reads the server's RSS every 0.1 s. The growth from the RSS at
its start to the peak is the figure of the RSS bound.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable
from typing import Any

import trio
from soak_attacks import ECHO_PACK, echoes, heartbeat_interrupts
from soak_client import OP_TIMEOUT_S, Server, Tally
from soak_server import proc_sample
from trio_websocket import ConnectionClosed, HandshakeError

HEARTBEAT_ROUNDS = 5


async def quiet_phase(server: Server, tally: Tally, pid: int, skip: set[str]) -> dict[str, Any]:
    """Run the quiet phase against the idle server ``pid`` (but the attacks named in
    ``skip``); return its RSS figures (MB)."""
    start_rss, _ = proc_sample(pid)
    peak = start_rss

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, proc_sample(pid)[0])
            await trio.sleep(0.1)

    rng = random.Random(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        if "heartbeat_interrupts" not in skip:
            for _ in range(HEARTBEAT_ROUNDS):
                await _bounded(
                    heartbeat_interrupts(server, tally, rng), tally, "heartbeat_interrupts"
                )
        if "echoes" not in skip:
            await _bounded(echoes(server, tally, rng), tally, "echoes")
        nursery.cancel_scope.cancel()
    end_rss, _ = proc_sample(pid)
    growth = (peak - start_rss) / 2**20
    return {
        "rss_mb_start": round(start_rss / 2**20, 1),
        "rss_mb_peak": round(peak / 2**20, 1),
        "rss_mb_end": round(end_rss / 2**20, 1),
        "echo_connections": ECHO_PACK,
        "rss_growth_mb": round(growth, 1),
        "rss_growth_mb_per_connection": round(growth / ECHO_PACK, 2),
    }


async def _bounded(visit: Awaitable[None], tally: Tally, name: str) -> None:
    """Await ``visit`` within ``OP_TIMEOUT_S``; a failure is a surprise, as in the mix."""
    try:
        with trio.fail_after(OP_TIMEOUT_S):
            await visit
    except* trio.TooSlowError:
        tally.surprise(f"{name} (quiet phase) took more than {OP_TIMEOUT_S} s")
    except* (ConnectionClosed, trio.BrokenResourceError, HandshakeError, OSError) as group:
        tally.surprise(f"{name} (quiet phase): {group.exceptions[0]!r}")
