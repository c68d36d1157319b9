"""The soak's canary: one well-behaved client, streaming and interrupting throughout.

While the mix and its attacks run, the canary asks for a short reply and reads it
to its DONE, then starts a long one and interrupts it, again and again, on a
session it reopens every few rounds. Its times (REQUEST -> DONE, INTERRUPT ->
INTERRUPT_ACK) say what the attacks cost a client that did nothing wrong; a
round over ``BUDGET_S``, or a session it could not open, is a miss.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from soak_client import Server, Tally, session
from trio_websocket import ConnectionClosed, HandshakeError

from trio_agent.testing.wire import Frame

#: A canary round slower than this is a miss (the budget the adversarial pass used).
BUDGET_S = 3.0
ROUNDS_PER_SESSION = 5


def first_stream_of(rid: str) -> Callable[[Frame], bool]:
    return lambda f: f["msg_type"] == "STREAM" and f["request_id"] == rid


@dataclass
class Canary:
    done_ms: list[float] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    misses: int = 0
    failures: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    def fail(self, what: str) -> None:
        self.misses += 1
        if len(self.failures) < 10:
            self.failures.append(what)

    async def run(self, server: Server, deadline: float) -> None:
        rng = random.Random(0)
        while trio.current_time() < deadline:
            try:
                with trio.fail_after(4 * BUDGET_S * ROUNDS_PER_SESSION):
                    await self._session(server, rng, deadline)
            except* trio.TooSlowError:
                self.fail("a session took too long")
            except* (ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError) as group:
                self.fail(f"{group.exceptions[0]!r}")
                await trio.sleep(0.2)

    async def _session(self, server: Server, rng: random.Random, deadline: float) -> None:
        async with session(server, self.tally, rng) as c:
            for _ in range(ROUNDS_PER_SESSION):
                if trio.current_time() >= deadline:
                    break
                rid = c.next_id("r")
                started = time.perf_counter()
                await c.request(rid, 20, 0)
                await c.done_of(rid)
                self._time(self.done_ms, started, "REQUEST -> DONE")

                rid = c.next_id("r")
                await c.request(rid, 1_000_000, 500)
                await c.until(first_stream_of(rid))
                started = time.perf_counter()
                await c.answer_to(await c.interrupt(rid))
                self._time(self.ack_ms, started, "INTERRUPT -> ACK")
                await c.done_of(rid)
                await trio.sleep(0.05)
            c.finish()

    def _time(self, into: list[float], started: float, what: str) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        into.append(elapsed_ms)
        if elapsed_ms > BUDGET_S * 1000:
            self.fail(f"{what} took {elapsed_ms:.0f} ms")
