"""Reading ``Cancelled.source``: it names the cancellation that was *delivered*.

Since Trio 0.31 a ``Cancelled`` says where it comes from: ``source`` is
``"explicit"`` (someone called ``cancel()``), ``"deadline"``, ``"nursery"``...,
with the ``reason`` and ``source_task`` of an explicit cancel. That is very good
for logs. But it describes the scope whose cancellation was delivered to the
task, which is not always the scope that ends up catching it.

Here an agent waits in ``trio.sleep(1)`` (which is ``move_on_after`` inside) and
its request scope is cancelled explicitly at the very moment its sleep expires.
When Trio processes the expired sleep first, the task is woken with the
*sleep's* ``Cancelled(source="deadline")``; the request scope is cancelled
before the task runs, so the sleep's own scope does not swallow that exception,
and it travels on to the request scope, which catches it. The request was
interrupted, and its ``Cancelled`` says "deadline".

Which of the two happens first depends on the order of the tasks woken in the
same tick, which Trio varies on purpose. So: log ``source`` and ``reason``, they
are usually right and always a good hint, but decide *who cancelled a request*
from your own bookkeeping (in trio-agent: the registry's decision, which the DONE
frame reports as ``status`` and ``cancelled_by``), or from ``scope.cancel_called``
and ``scope.cancelled_caught`` of the scope you own.

Run it: ``python docs/examples/cancelled_source.py``
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.testing


async def one_race(sources: Counter[str]) -> None:
    request_scope = trio.CancelScope()

    async def agent() -> None:
        with request_scope:
            try:
                await trio.sleep(1)
                await trio.lowlevel.checkpoint()  # if the sleep ended first, Cancelled lands here
            except trio.Cancelled as cancelled:
                sources[cancelled.source] += 1
                raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent)
        await trio.sleep(1)  # wakes in the same tick as the agent's sleep
        request_scope.cancel(reason="INTERRUPT c7")
    # Whatever the exception said, this scope is the one that was cancelled,
    # and it caught the Cancelled.
    assert request_scope.cancel_called
    assert request_scope.cancelled_caught


async def main() -> None:
    sources: Counter[str] = Counter()
    for _ in range(200):
        await one_race(sources)
    print(f"200 requests cancelled explicitly; Cancelled.source said: {dict(sources)}")
    assert sum(sources.values()) == 200
    assert set(sources) <= {"explicit", "deadline"}


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
