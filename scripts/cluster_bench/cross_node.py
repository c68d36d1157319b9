"""Figures 2 and 3: INTERRUPT -> ACK across nodes, and resume time with the owner
alive or dead.

Two nodes, A and B, on one Redis. A *local* trial connects to A, starts a long
reply there and INTERRUPTs it. A *cross* trial connects to A, starts the reply,
drops the connection (reset, frames in flight), RESUMEs on B (which relays A's
frames; the resume is timed: RESUME sent -> first replayed frame and -> RESUMED,
the owner alive), waits for a few relayed frames, then INTERRUPTs on B: the
request runs on A, the connection is on B. Trials alternate local and cross.

*Owner dead*: a node of its own per trial (started up front) runs the reply; the
client stops reading (frames in flight), the node is killed with SIGKILL, the
client resets its connection and RESUMEs on B. B cannot hear from the dead node;
it waits for its lease (``--node-lease-s``) before RESUMED, then the request ends
with DONE NODE_LOST. Timed: RESUME sent -> RESUMED, -> first frame, -> the DONE.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from interrupt_bench.scenarios import ENDLESS
from interrupt_bench.stats import summarize

from .common import WAIT_S, Budget, ClusterSession, ServerTree, fmt, row

#: Words per second of a trial's reply: steady, so frames are in flight when it drops.
PACE = 200.0
#: Cross-node ACK p99 <= 2 x local p99 + 1 ms; resume p99 <= 50 ms (owner alive),
#: <= lease + 100 ms (owner dead).
OWNER_ALIVE_MS = 50.0
DEAD_MARGIN_MS = 100.0


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else (end - start) * 1e3


async def _reach(session: ClusterSession, rid: str, seq: int) -> None:
    await asyncio.wait_for(session.reached([session.replies[rid]], seq), WAIT_S)


async def _close(session: ClusterSession) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        await session.close()


async def local_trial(a: ServerTree, out: dict[str, list[float]], errors: list[str]) -> None:
    session = await ClusterSession.open_on(a.port)
    try:
        session.request("r", words=ENDLESS, words_per_s=PACE)
        await _reach(session, "r", 5)
        acked = session.interrupt("r")
        await asyncio.wait_for(acked, WAIT_S)
        if (ms := session.ack_ms(acked)) is not None:
            out["local_ack_ms"].append(ms)
    except (TimeoutError, OSError) as exc:
        errors.append(f"local trial: {exc!r}")
    finally:
        await _close(session)


async def cross_trial(
    a: ServerTree, b: ServerTree, out: dict[str, list[float]], errors: list[str]
) -> None:
    session = await ClusterSession.open_on(a.port)
    try:
        session.request("r", words=ENDLESS, words_per_s=PACE)
        await _reach(session, "r", 5)
        last_seq = await session.drop(0.02)
        if not await session.resume_on(b.port, last_seq):
            errors.extend(session.errors[-1:])
            return
        trace = session.resumes[-1]
        await asyncio.wait_for(trace.first_frame, WAIT_S)
        for key, end in (
            ("alive_first_frame_ms", trace.first_frame_at),
            ("alive_resumed_ms", trace.resumed_at),
        ):
            if (ms := _ms(trace.resume_sent_at, end)) is not None:
                out[key].append(ms)
        await _reach(session, "r", session.replies["r"].last_seq + 5)
        acked = session.interrupt("r")
        await asyncio.wait_for(acked, WAIT_S)
        if (ms := session.ack_ms(acked)) is not None:
            out["cross_ack_ms"].append(ms)
        await asyncio.wait_for(session.replies["r"].done, WAIT_S)
    except (TimeoutError, OSError) as exc:
        errors.append(f"cross trial: {exc!r}")
    finally:
        await _close(session)


async def owner_dead_trial(
    victim: ServerTree, b: ServerTree, out: dict[str, list[float]], errors: list[str]
) -> str | None:
    """One trial; the DONE's error code (NODE_LOST is right)."""
    session = await ClusterSession.open_on(victim.port)
    try:
        reply = session.request("r", words=ENDLESS, words_per_s=PACE)
        await _reach(session, "r", 5)
        assert session.client is not None
        session.client.pause_reading()
        await asyncio.sleep(0.02)  # frames in flight, and in the store
        victim.kill()
        last_seq = await session.drop(0.0)
        if not await session.resume_on(b.port, last_seq):
            errors.extend(session.errors[-1:])
            return None
        trace = session.resumes[-1]
        await asyncio.wait_for(reply.done, WAIT_S)
        for key, end in (
            ("dead_resumed_ms", trace.resumed_at),
            ("dead_first_frame_ms", trace.first_frame_at),
            ("dead_done_ms", session.done_at.get("r")),
        ):
            if (ms := _ms(trace.resume_sent_at, end)) is not None:
                out[key].append(ms)
        figures = reply.figures()
        out["dead_lost"].append(figures["lost"])
        out["dead_duplicated"].append(figures["duplicated"])
        error = reply.dones[0].get("error") if reply.dones else None
        return (
            str(error.get("code")) if isinstance(error, dict) else str(reply.dones[0].get("status"))
        )
    except (TimeoutError, OSError) as exc:
        errors.append(f"owner-dead trial: {exc!r}")
        return None
    finally:
        await _close(session)


KEYS = (
    "local_ack_ms",
    "cross_ack_ms",
    "alive_first_frame_ms",
    "alive_resumed_ms",
    "dead_resumed_ms",
    "dead_first_frame_ms",
    "dead_done_ms",
    "dead_lost",
    "dead_duplicated",
)


async def measure(
    a: ServerTree, b: ServerTree, victims: list[ServerTree], budget: Budget
) -> dict[str, Any]:
    out: dict[str, list[float]] = {key: [] for key in KEYS}
    errors: list[str] = []
    for _ in range(budget.interrupt_trials):
        await local_trial(a, out, errors)
        await cross_trial(a, b, out, errors)
    codes = [await owner_dead_trial(victim, b, out, errors) for victim in victims]
    figures: dict[str, Any] = {key: summarize(out[key]) for key in KEYS if key.endswith("_ms")}
    local, cross = figures["local_ack_ms"]["p99"], figures["cross_ack_ms"]["p99"]
    figures["ack_target_ms"] = None if local is None else round(2 * local + 1, 3)
    figures["ack_met"] = None if cross is None or local is None else cross <= 2 * local + 1
    alive = figures["alive_first_frame_ms"]["p99"]
    figures["alive_met"] = None if alive is None else alive <= OWNER_ALIVE_MS
    dead_limit = budget.lease_s * 1e3 + DEAD_MARGIN_MS
    dead = figures["dead_first_frame_ms"]["p99"]
    figures["dead_target_ms"] = dead_limit
    figures["dead_met"] = None if dead is None else dead <= dead_limit
    figures["dead_done_codes"] = codes
    figures["dead_frames_lost"] = int(sum(out["dead_lost"]))
    figures["dead_frames_duplicated"] = int(sum(out["dead_duplicated"]))
    figures["lease_s"] = budget.lease_s
    figures["errors"] = len(errors)
    figures["first_problems"] = errors[:5]
    figures["samples"] = {
        key: sorted(round(v, 4) for v in out[key]) for key in KEYS if key.endswith("_ms")
    }
    return figures


def rows(f: dict[str, Any]) -> list[list[str]]:
    def p(key: str, q: str = "p99") -> str:
        return fmt(f[key][q], 2, " ms")

    nodelost = sum(1 for c in f["dead_done_codes"] if c == "NODE_LOST")
    return [
        row(
            "2. INTERRUPT->ACK p99, cross-node vs local",
            f"cross {p('cross_ack_ms')} (p50 {p('cross_ack_ms', 'p50')}), local "
            f"{p('local_ack_ms')} (p50 {p('local_ack_ms', 'p50')}); n={f['cross_ack_ms']['count']}",
            f"<= 2 x local + 1 = {fmt(f['ack_target_ms'], 2, ' ms')}",
            f["ack_met"],
        ),
        row(
            "3a. resume, owner alive: RESUME->1st frame p99",
            f"{p('alive_first_frame_ms')} (->RESUMED {p('alive_resumed_ms')}; "
            f"n={f['alive_first_frame_ms']['count']})",
            f"<= {OWNER_ALIVE_MS:g} ms",
            f["alive_met"],
        ),
        row(
            "3b. resume, owner killed: RESUME->1st frame p99",
            f"{p('dead_first_frame_ms')} (->RESUMED {p('dead_resumed_ms')}; "
            f"->DONE NODE_LOST {p('dead_done_ms')}; {nodelost}/{len(f['dead_done_codes'])} "
            f"NODE_LOST; n={f['dead_first_frame_ms']['count']})",
            f"<= lease + {DEAD_MARGIN_MS:g} = {fmt(f['dead_target_ms'], 0, ' ms')}",
            f["dead_met"],
        ),
    ]
