"""Pitfall: a shield without a deadline can hold a session open forever.

Cleanup that must not be cut short (closing an upstream stream, saving a partial
answer) belongs in a *shielded* scope: the cancellation that is ending the
request waits outside it. But a shield also keeps out every later cancellation,
including the one that closes the session and the one that shuts the server
down. If the cleanup hangs (an upstream that never answers), nothing can stop it.

``broken`` shields its cleanup with ``trio.CancelScope(shield=True)``.
``fixed`` uses ``trio.move_on_after(1.0, shield=True)``: shielded, and bounded.
(``trio_agent.observability.trace.shielded_cleanup(1.0, "close upstream")`` is the same, and
shows up in traces.)

The client disconnects in the middle of each reply. With ``fixed`` the session
is gone one second later; with ``broken`` it is still there a minute later, its
request task stuck in the shield, and the server logs that an agent ignores
cancellation.

The example runs on ``trio.testing.MockClock``: the minute takes no real time.

Run it: ``python docs/examples/unbounded_shield.py``
"""

from __future__ import annotations

import trio
import trio.testing
from loguru import logger

from trio_agent import AgentRequest, AgentServer, ResponseStream, ServerConfig
from trio_agent.testing.wire import open_wire

#: The upstream of both agents never answers their "close" call (until we let it).
upstream_answers = trio.Event()


async def close_upstream() -> None:
    await upstream_answers.wait()


async def broken(request: AgentRequest, stream: ResponseStream) -> None:
    try:
        await stream.send("hello")
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):  # no deadline: can wait forever
            await close_upstream()


async def fixed(request: AgentRequest, stream: ResponseStream) -> None:
    try:
        await stream.send("hello")
        await trio.sleep_forever()
    finally:
        with trio.move_on_after(1.0, shield=True):  # shielded, and bounded
            await close_upstream()


async def disconnect_mid_reply(server: AgentServer, agent: str, nursery: trio.Nursery) -> float:
    """Disconnect after the first frame; return how long the session outlived the client."""
    async with open_wire(server, serve_in=nursery) as wire:
        await wire.request("r1", "hi", agent=agent)
        await wire.receive_until(lambda f: f["msg_type"] == "STREAM")
        await trio.aclose_forcefully(wire.stream)  # the client vanishes
    left = trio.current_time()
    with trio.move_on_after(60):
        await server.wait_idle()
    return trio.current_time() - left


async def main() -> None:
    # Resumption off: the session ends when its client vanishes (with it on, when
    # the resume window passes; the lesson is the same).
    server = AgentServer(
        ServerConfig(port=0, resume_window_s=0), {"broken": broken, "fixed": fixed}
    )
    async with trio.open_nursery() as nursery:  # the server's side of each connection
        lasted = await disconnect_mid_reply(server, "fixed", nursery)
        print(f"fixed:  the session closed {lasted:g} s after the client left")
        assert lasted == 1.0

        lasted = await disconnect_mid_reply(server, "broken", nursery)
        print(f"broken: the session was still open {lasted:g} s after the client left")
        assert lasted == 60.0
        assert server.stats()["connections"] == 1
        upstream_answers.set()  # only the upstream answering lets it go
        await server.wait_idle()
        print("broken: ...and closed only when the upstream finally answered")


if __name__ == "__main__":
    logger.remove()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
