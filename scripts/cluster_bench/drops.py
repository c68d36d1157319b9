"""Figure 4: frames lost / duplicated across random drops and node kills.

A :class:`trio_agent.testing.cluster.LocalCluster` (redis-server, three nodes,
HAProxy on loopback, ``--node-lease-s`` short). Sessions connect through HAProxy,
each streaming long replies one after the other; at random moments a session
stops reading for up to 50 ms, resets its connection and resumes through HAProxy
(on whichever node HAProxy picks). Meanwhile nodes are killed with SIGKILL, one
at a time, each restarted on its port (a new node id) before the next kill; a
session whose connection dies with its node resumes the same way.

Counted per request, over all its connections: a ``seq`` below the DONE's
``frames`` never received = lost; a ``seq`` received twice = duplicated; exactly
one DONE (``completed``, ``NODE_LOST`` when its node was killed, or ``interrupted``
never: there are no INTERRUPTs here). Target 0 / 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trio_agent.testing.cluster import LocalCluster

from .common import WAIT_S, Budget, ClusterSession, fmt, row


@dataclass
class DropState:
    drops_left: int
    kills_left: int
    drops_done: int = 0
    resumes_after_kill: int = 0
    kills: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Set at each drop (the killer waits for its share of them).
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.perf_counter)
    #: When a session failed (seconds into the run), to set beside the kills'.
    failed_at: list[float] = field(default_factory=list)

    def now(self) -> float:
        return round(time.perf_counter() - self.started, 3)


async def _open(port: int) -> ClusterSession:
    for attempt in range(50):
        try:
            return await asyncio.wait_for(ClusterSession.open_on(port), WAIT_S)
        except (OSError, TimeoutError, RuntimeError, Exception):
            if attempt == 49:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def drive(port: int, budget: Budget, index: int, state: DropState) -> ClusterSession | None:
    """One session: replies one after the other until every drop and kill is done."""
    rng = random.Random(budget.seed * 7919 + index)
    try:
        session = await _open(port)
    except Exception as exc:
        state.errors.append(f"session {index}: open: {exc!r}")
        return None
    n = 0
    try:
        while state.drops_left > 0 or state.kills_left > 0:
            reply = session.request(
                f"r{n}", words=budget.drop_words, words_per_s=budget.drop_words_per_s
            )
            n += 1
            while not reply.ended:
                dropping = state.drops_left > 0
                point = reply.last_seq + rng.randint(5, 60) if dropping else budget.drop_words
                reached = session.reached([reply], point)
                waits: set[asyncio.Future[Any]] = {reached, session.closed, reply.done}
                await asyncio.wait(
                    waits,
                    timeout=WAIT_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if reply.ended:
                    break
                if session.closed.done():
                    last_seq = session.lost_connection()
                    state.resumes_after_kill += 1
                elif reached.done() and dropping and state.drops_left > 0:
                    state.drops_left -= 1
                    state.drops_done += 1
                    state.progress.set()
                    last_seq = await session.drop(rng.uniform(0, 0.05))
                elif reached.done():
                    continue
                else:
                    state.errors.append(f"session {index}: no frame for {WAIT_S:g} s")
                    return session
                await asyncio.sleep(rng.uniform(0, 0.02))
                if not await session.resume_on(port, last_seq, attempts=50):
                    state.failed_at.append(state.now())
                    return session
        return session
    finally:
        with contextlib.suppress(OSError, TimeoutError):
            await session.close()


async def killer(cluster: LocalCluster, budget: Budget, state: DropState) -> None:
    """Kill a node each time another share of the drops is done (node 0, 1, 2, ...),
    and restart it on its port before the next kill."""
    for k in range(budget.kills):
        threshold = budget.drops * (k + 1) // (budget.kills + 1)
        while state.drops_done < threshold and state.drops_left > 0:
            state.progress.clear()
            await state.progress.wait()
        index = k % len(cluster.nodes)
        node_id = cluster.nodes[index].node_id
        cluster.kill(index)
        state.kills.append({"node": node_id, "after_drops": state.drops_done, "at_s": state.now()})
        await asyncio.to_thread(cluster.restart, index)
        state.kills_left -= 1


async def measure(cluster: LocalCluster, budget: Budget, log_dir: Path) -> dict[str, Any]:
    state = DropState(drops_left=budget.drops, kills_left=budget.kills)
    kill_task = asyncio.create_task(killer(cluster, budget, state))
    try:
        results = await asyncio.gather(
            *(drive(cluster.port, budget, i, state) for i in range(budget.drop_sessions))
        )
        # Sessions end once every kill is done; if they all failed before, stop here.
        if not kill_task.done():
            state.errors.append("sessions ended before every kill")
    finally:
        kill_task.cancel()
    sessions = [s for s in results if s is not None]
    per_reply = [(r.figures(), r.dones) for s in sessions for r in s.replies.values()]

    def total(key: str) -> int:
        return sum(f[key] for f, _ in per_reply)

    statuses: dict[str, int] = {}
    for _, dones in per_reply:
        if dones:
            error = dones[0].get("error")
            key = error.get("code") if isinstance(error, dict) else dones[0].get("status")
            statuses[str(key)] = statuses.get(str(key), 0) + 1
    figures: dict[str, Any] = {
        "sessions": len(sessions),
        "drops": state.drops_done,
        "kills": state.kills,
        "resumes": sum(len(s.resumes) for s in sessions),
        "resumes_after_kill": state.resumes_after_kill,
        "requests": len(per_reply),
        "done_statuses": statuses,
        "frames_received": total("frames"),
        "frames_lost": total("lost"),
        "frames_duplicated": total("duplicated"),
        "frames_out_of_order": total("out_of_order"),
        "missing_dones": total("missing_dones"),
        "extra_dones": total("extra_dones"),
        "violations": sum(len(s.finish()) for s in sessions),
        "errors": len(state.errors) + sum(len(s.errors) for s in sessions),
        "sessions_failed_at_s": state.failed_at,
        "sessions_failed_within_3s_of_a_kill": sum(
            1 for t in state.failed_at if any(0 <= t - k["at_s"] <= 3 for k in state.kills)
        ),
        "first_problems": (state.errors + [e for s in sessions for e in s.errors])[:5],
        # To follow a request through the nodes' logs: which DONEs it got.
        "extra_done_details": [
            {"session": s.session_id, "request": r.request_id, "dones": r.dones}
            for s in sessions
            for r in s.replies.values()
            if len(r.dones) > 1
        ],
        # A request with frames lost: its DONEs and the seqs it never received.
        "lost_details": [
            {
                "session": s.session_id,
                "request": r.request_id,
                "dones": r.dones,
                "missing": sorted(
                    set(range(r.dones[0].get("frames") or 0)) - set(r.seqs) if r.dones else []
                )[:20],
                "received": len(set(r.seqs)),
            }
            for s in sessions
            for r in s.replies.values()
            if r.figures()["lost"]
        ],
        # A RESUME_GAP's frames against what the client received (distinct seqs).
        "resume_gap_details": [
            {
                "session": s.session_id,
                "request": r.request_id,
                "frames": r.dones[0].get("frames"),
                "received": len(set(r.seqs)),
            }
            for s in sessions
            for r in s.replies.values()
            if r.figures()["resume_gaps"]
        ],
    }
    if (
        figures["errors"]
        or figures["frames_lost"]
        or figures["frames_duplicated"]
        or figures["extra_dones"]
        or figures["missing_dones"]
        or figures["resume_gap_details"]
        or figures["lost_details"]
    ):
        # The cluster's folder goes with it: keep the processes' whole output, to
        # follow a request through the nodes (its session id is in every line).
        (log_dir / "drops-cluster.log").write_text(cluster.logs(1_000_000))
    figures["met"] = (
        figures["frames_lost"] == figures["frames_duplicated"] == 0
        and figures["missing_dones"] == figures["extra_dones"] == 0
        and figures["drops"] == budget.drops
        and len(state.kills) == budget.kills
    )
    return figures


def rows(f: dict[str, Any]) -> list[list[str]]:
    return [
        row(
            "4. frames lost / duplicated (drops, kills)",
            f"{f['frames_lost']} / {f['frames_duplicated']} ({f['drops']} drops, "
            f"{len(f['kills'])} kills, {f['requests']} requests, {fmt(f['frames_received'], 0)} "
            f"frames; DONEs missing/extra {f['missing_dones']}/{f['extra_dones']}; "
            f"{f['done_statuses']}; errors {f['errors']})",
            "0 / 0, one DONE each",
            f["met"],
        )
    ]
