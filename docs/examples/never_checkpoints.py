"""Pitfall: an agent that never reaches a checkpoint cannot be interrupted.

Trio cancels a task at its *checkpoints*: the ``await`` of something that can
block (``stream.send``, ``trio.sleep``, a socket read...). Between two of them a
task runs alone: no other task of the process runs, not even the session's
reader. So an agent that computes for a while without a checkpoint does not only
ignore the INTERRUPT; nobody has read it yet.

Three agents do the same work in 2,000 small pieces and are interrupted as soon
as the client sees their first frame:

* ``broken`` crunches straight through: the INTERRUPT is read only when it is
  finished, and arrives too late to cut anything (``already_done``).
* ``with_checkpoints`` adds ``await trio.lowlevel.checkpoint()`` after each
  piece: the reader runs in between, the INTERRUPT lands at the next piece.
* ``in_a_thread`` hands a blocking call it cannot change to
  ``trio.to_thread.run_sync(..., abandon_on_cancel=True)``: the event loop stays
  free, and on INTERRUPT the agent stops waiting at once. The thread itself is
  not stopped (Python cannot kill a thread): it finishes on its own, so give the
  blocking call its own timeout.

Run it: ``python docs/examples/never_checkpoints.py``
"""

from __future__ import annotations

import threading
from typing import Any

import trio
from loguru import logger

from trio_agent import AgentRequest, AgentServer, ResponseStream, ServerConfig
from trio_agent.testing.wire import open_wire

PIECES = 2_000
progress = {"broken": 0, "with_checkpoints": 0, "in_a_thread": 0}
release_the_thread = threading.Event()
thread_finished = threading.Event()


def crunch() -> int:
    """A small piece of CPU work: tokenizing, parsing, a step of a local model."""
    return sum(i * i for i in range(300))


async def broken(request: AgentRequest, stream: ResponseStream) -> None:
    await stream.send("thinking...")
    for _ in range(PIECES):
        crunch()  # no await: nothing else runs until the loop is over
        progress["broken"] += 1
    await stream.send(" done")


async def with_checkpoints(request: AgentRequest, stream: ResponseStream) -> None:
    await stream.send("thinking...")
    for _ in range(PIECES):
        crunch()
        progress["with_checkpoints"] += 1
        # Lets every other task run, and raises Cancelled if we were cut.
        await trio.lowlevel.checkpoint()
    await stream.send(" done")


async def in_a_thread(request: AgentRequest, stream: ResponseStream) -> None:
    await stream.send("thinking...")

    def blocking_call() -> None:  # a library call that blocks and cannot be changed
        release_the_thread.wait(timeout=10)
        progress["in_a_thread"] += 1
        thread_finished.set()

    await trio.to_thread.run_sync(blocking_call, abandon_on_cancel=True)
    await stream.send(" done")


async def interrupt_at_first_frame(
    server: AgentServer, agent: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    async with open_wire(server) as wire:
        await wire.request("r1", "go", agent=agent)
        await wire.receive_until(lambda f: f["msg_type"] == "STREAM")
        await wire.interrupt("r1")
        seen: dict[str, dict[str, Any]] = {}
        while len(seen) < 2:  # the ACK and the DONE, in whichever order they come
            frame = await wire.receive()
            if frame["msg_type"] in ("INTERRUPT_ACK", "DONE"):
                seen[frame["msg_type"]] = frame["payload"]
        assert not wire.finish(), wire.excerpt()
    return seen["INTERRUPT_ACK"], seen["DONE"]


async def main() -> None:
    agents = {"broken": broken, "with_checkpoints": with_checkpoints, "in_a_thread": in_a_thread}
    server = AgentServer(ServerConfig(port=0), agents)

    ack, done = await interrupt_at_first_frame(server, "broken")
    print(
        f"broken:           ACK targets={ack['targets']}, DONE {done['status']}, "
        f"{progress['broken']}/{PIECES} pieces ran"
    )
    assert ack["interrupted"] == []
    assert ack["targets"] == {"r1": "already_done"}
    assert done["status"] == "completed"
    assert progress["broken"] == PIECES

    ack, done = await interrupt_at_first_frame(server, "with_checkpoints")
    print(
        f"with_checkpoints: ACK interrupted={ack['interrupted']}, DONE {done['status']}, "
        f"{progress['with_checkpoints']}/{PIECES} pieces ran"
    )
    assert ack["interrupted"] == ["r1"]
    assert done["status"] == "interrupted"
    assert progress["with_checkpoints"] < PIECES

    ack, done = await interrupt_at_first_frame(server, "in_a_thread")
    print(
        f"in_a_thread:      ACK interrupted={ack['interrupted']}, DONE {done['status']}, "
        f"the thread finished: {thread_finished.is_set()}"
    )
    assert ack["interrupted"] == ["r1"]
    assert done["status"] == "interrupted"
    assert not thread_finished.is_set()
    await server.wait_idle()  # the agent returned without waiting for its thread
    release_the_thread.set()  # ...which is still there, and now finishes on its own
    await trio.to_thread.run_sync(thread_finished.wait, 10)
    print(
        f"                  after the request ended, the thread finished: {thread_finished.is_set()}"
    )


if __name__ == "__main__":
    logger.remove()  # the server's own log lines would drown the story
    trio.run(main)
