"""Pitfall: catching ``Cancelled`` by accident with a bare ``except BaseException``.

``trio.Cancelled`` derives from ``BaseException``, not ``Exception``, exactly so
that ``except Exception:`` lets it through. A handler for *everything*
(``except BaseException:``, a bare ``except:``) catches it too, and if it does
not re-raise, the cancellation is swallowed: the agent carries on as if nothing
had happened. Every later checkpoint raises ``Cancelled`` again (the scope stays
cancelled), so a loop like the one below burns through its remaining work,
failing at each step, and the server's trace shows a scope that was cancelled
but whose agent "returned after cancel".

The client is not hurt (the session sent the ACK and the DONE the moment it read
the INTERRUPT, and refuses anything the agent sends afterwards), but the work
goes on, and an agent that loops forever this way can never be stopped.

``broken`` logs-and-continues on ``BaseException``; ``fixed`` catches
``Exception`` (and, where it must catch everything, re-raises ``Cancelled``
first).

Run it: ``python docs/examples/catch_all.py``
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from loguru import logger

from trio_agent import AgentRequest, AgentServer, ResponseStream, ServerConfig
from trio_agent.observability.trace import MemoryTracer
from trio_agent.testing.wire import open_wire

WORDS = 50
steps_after_cancel = {"broken": 0, "fixed": 0}


async def fetch_word(i: int) -> str:
    await trio.sleep(0.01)  # an upstream call
    return f" w{i}"


async def broken(request: AgentRequest, stream: ResponseStream) -> None:
    for i in range(WORDS):
        try:
            await stream.send(await fetch_word(i))
        except BaseException as exc:  # meant: "log any failure and go on"
            if isinstance(exc, trio.Cancelled):
                steps_after_cancel["broken"] += 1
            logger.debug("step failed: {!r}", exc)


async def fixed(request: AgentRequest, stream: ResponseStream) -> None:
    for i in range(WORDS):
        try:
            await stream.send(await fetch_word(i))
        except trio.Cancelled:
            steps_after_cancel["fixed"] += 1
            raise  # if you must catch everything, let this one go first
        except Exception as exc:  # Cancelled is not an Exception: it passes
            logger.debug("step failed: {!r}", exc)


async def interrupt_after_three_words(agent: str) -> dict[str, Any]:
    tracer = MemoryTracer()
    server = AgentServer(
        ServerConfig(port=0), {agent: broken if agent == "broken" else fixed}, trace=tracer
    )
    async with open_wire(server) as wire:
        await wire.request("r1", "go", agent=agent)
        for _ in range(3):
            await wire.receive_until(lambda f: f["msg_type"] == "STREAM")
        await wire.until_ack(await wire.interrupt("r1"))
        done = await wire.until_done("r1")
        assert done["payload"]["status"] == "interrupted"  # the client sees no difference
    await server.wait_idle()
    return next(e for e in tracer.events if e["event"] == "scope_closed")


async def main() -> None:
    closed = await interrupt_after_three_words("broken")
    print(
        f"broken: scope closed: {closed['outcome']}; "
        f"{steps_after_cancel['broken']} steps ran on after the cancellation"
    )
    assert closed["outcome"] == "returned after cancel"
    assert steps_after_cancel["broken"] == WORDS - 3

    closed = await interrupt_after_three_words("fixed")
    print(
        f"fixed:  scope closed: {closed['outcome']}; "
        f"{steps_after_cancel['fixed']} step saw the cancellation, and let it go"
    )
    assert closed["outcome"] == "cancelled"
    assert steps_after_cancel["fixed"] == 1


if __name__ == "__main__":
    logger.remove()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
