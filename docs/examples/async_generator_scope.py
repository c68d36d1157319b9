"""Pitfall: an async generator that yields inside a cancel scope (or a nursery).

A cancel scope belongs to the *task* that opened it, and stays open until the
``with`` block is left. An async generator that opens one and then ``yield``s
leaves it open while the *consumer's* code runs: the consumer is now inside a
scope it cannot see. Here the generator gives itself one second to produce
tokens; that deadline then fires in the middle of the consumer's own work (its
``trio.sleep``), the ``Cancelled`` comes out of the consumer's loop, and when
the generator is finally closed Trio finds its scopes no longer nested and
raises ``RuntimeError: Cancel scope stack corrupted``. The request fails. A
nursery opened around a ``yield`` has the same problem (PEP 789).

The fix: never yield from inside a scope or nursery to code outside it. Either
put the timeout where the loop is, or turn the generator into a channel with
``@trio.as_safe_channel``, which runs it in a task of its own, where its scopes
are its own business.

Run it: ``python docs/examples/async_generator_scope.py``
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import trio
import trio.testing
from loguru import logger

from trio_agent import AgentRequest, AgentServer, ResponseStream, ServerConfig
from trio_agent.testing.wire import open_wire


async def tokens() -> AsyncIterator[str]:
    with trio.move_on_after(1.0):  # "stop producing after a second"
        for i in range(5):
            await trio.sleep(0.1)  # waiting for the upstream
            yield f" t{i}"  # ...and yielding with the scope still open


@trio.as_safe_channel
async def safe_tokens() -> AsyncGenerator[str, None]:
    with trio.move_on_after(1.0):  # same generator, run in a task of its own
        for i in range(5):
            await trio.sleep(0.1)
            yield f" t{i}"


async def broken(request: AgentRequest, stream: ResponseStream) -> None:
    async for token in tokens():
        await stream.send(token)
        await trio.sleep(0.5)  # the consumer's own work, e.g. speaking the token


async def fixed(request: AgentRequest, stream: ResponseStream) -> None:
    async with safe_tokens() as channel:
        async for token in channel:
            await stream.send(token)
            await trio.sleep(0.5)


async def run(server: AgentServer, agent: str) -> dict[str, Any]:
    async with open_wire(server) as wire:
        await wire.request("r1", "go", agent=agent)
        done = await wire.until_done("r1")
        assert not wire.finish(), wire.excerpt()
    return dict(done["payload"])


async def main() -> None:
    server = AgentServer(ServerConfig(port=0), {"broken": broken, "fixed": fixed})
    done = await run(server, "broken")
    print(
        f"broken: DONE {done['status']} after {done['frames']} frames: {done['error']['message'][:60]}..."
    )
    assert done["status"] == "failed"
    assert "Cancel scope stack corrupted" in done["error"]["message"]

    done = await run(server, "fixed")
    print(
        f"fixed:  DONE {done['status']} after {done['frames']} frames (the producer's second was up)"
    )
    assert done["status"] == "completed"
    assert done["frames"] == 2


if __name__ == "__main__":
    logger.remove()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
