"""The mirror never makes a reply wait for the store: bounded, and a session whose
frames cannot all be queued is lost to the cluster (deleted from the store), not stalled."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio
import trio.testing

from trio_agent.cluster.mirror import COALESCE_S, Mirror
from trio_agent.cluster.store import FrameWrite, StoredSort, StoreUnavailable, Write


class SlowStore:
    """A store whose writes wait until ``open`` is set (or fail while ``down``)."""

    def __init__(self) -> None:
        self.open = trio.Event()
        self.down = False
        self.written: list[Write] = []
        self.closed: list[str] = []

    async def write(self, batch: Sequence[Write], *, max_bytes: int, ttl_s: float) -> None:
        if self.down:
            raise StoreUnavailable("down")
        await self.open.wait()
        self.written.extend(batch)

    async def close_session(self, session_id: str, *, owner: str) -> bool:
        self.closed.append(session_id)
        return True


def mirror_on(
    store: SlowStore, *, max_queued: int, on_trouble: Callable[[str | None], None]
) -> Mirror:
    """A mirror of node "node" on ``store``, each stream bounded at 100,000 bytes."""
    return Mirror(
        store,  # type: ignore[arg-type]
        node_id="node",
        max_queued=max_queued,
        max_bytes=100_000,
        ttl_s=60,
        on_trouble=on_trouble,
    )


def frame(session: str, seq: int) -> FrameWrite:
    return FrameWrite(session, "r1", StoredSort.STREAM, seq, f"{seq}", "node")


async def test_a_full_queue_loses_the_session_instead_of_blocking() -> None:
    store = SlowStore()
    troubles: list[str | None] = []
    mirror = mirror_on(store, max_queued=3, on_trouble=troubles.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mirror.run)
        await trio.testing.wait_all_tasks_blocked()
        # Synchronous, never blocking, whatever the store does:
        results = [mirror.add(frame("s1", seq)) for seq in range(5)]
        assert results == [True, True, True, False, False]
        assert mirror.lost == {"s1"}
        assert not mirror.add(frame("s1", 5))  # lost: nothing more of it is queued
        assert mirror.add(frame("s2", 0)) is False  # (the queue is still full)
        store.open.set()
        with trio.fail_after(5):
            await mirror.wait_empty()
        nursery.cancel_scope.cancel()
    assert [w.seq for w in store.written if isinstance(w, FrameWrite)][:3] == [0, 1, 2]
    assert "s1" in store.closed  # its hole-y stream is deleted: no resume elsewhere
    assert mirror.dropped_total == 4


async def test_writes_wait_in_order_while_the_store_is_down(autojump_clock: trio.abc.Clock) -> None:
    store = SlowStore()
    store.open.set()
    store.down = True
    troubles: list[str | None] = []
    mirror = mirror_on(store, max_queued=100, on_trouble=troubles.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mirror.run)
        for seq in range(3):
            mirror.add(frame("s1", seq))
        await trio.sleep(1.0)
        assert troubles
        assert troubles[-1] == "down"
        assert store.written == []
        store.down = False
        with trio.fail_after(5):
            await mirror.wait_empty()
        nursery.cancel_scope.cancel()
    assert [w.seq for w in store.written if isinstance(w, FrameWrite)] == [0, 1, 2]
    assert troubles[-1] is None


async def test_writes_wait_for_the_coalescing_tick_an_urgent_job_does_not(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A batch of writes waits for the tick (one round trip per 20 ms); an urgent job
    (a takeover's "flushed") is sent at once, behind every write queued before it.
    The clock is frozen: only the test could move it, and it does not."""
    store = SlowStore()
    store.open.set()
    answered: list[int] = []

    async def answer() -> None:
        answered.append(len(store.written))

    mirror = mirror_on(store, max_queued=100, on_trouble=print)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mirror.run)
        mirror.add(frame("s1", 0))
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.written) == 1  # the first round trip goes at once
        mirror.add(frame("s1", 1))
        mirror.add(frame("s1", 2))
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.written) == 1  # the next waits for the tick
        assert mirror.add_urgent(answer)
        await trio.testing.wait_all_tasks_blocked()
        # The clock has not moved: the writes went, then the job, in that order.
        assert answered == [3]
        assert trio.current_time() == start
        mirror.add(frame("s1", 3))  # and after it, writes wait for the tick again
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.written) == 3
        mock_clock.jump(COALESCE_S)
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.written) == 4
        nursery.cancel_scope.cancel()


async def test_an_urgent_job_with_nothing_unstored_runs_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    store = SlowStore()
    store.open.set()
    ran = trio.Event()

    async def answer() -> None:
        ran.set()

    mirror = mirror_on(store, max_queued=100, on_trouble=print)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mirror.run)
        mirror.add(frame("s1", 0))  # a round trip just made: the next tick is 20 ms away
        await trio.testing.wait_all_tasks_blocked()
        assert mirror.add_urgent(answer)
        await trio.testing.wait_all_tasks_blocked()
        assert ran.is_set()
        assert trio.current_time() == start
        nursery.cancel_scope.cancel()


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the task named ``name`` (each time it is woken and runs)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.steps += 1


async def test_a_stream_of_writes_wakes_the_mirror_about_once_per_tick(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Writers hand frames over a millisecond apart (two sessions, as each writer's
    batch ends): the mirror's task is not woken per batch but runs about once per
    coalescing tick, and sends one round trip per tick with everything queued."""
    store = SlowStore()
    store.open.set()
    round_trips = 0
    write = store.write

    async def counted_write(batch: Sequence[Write], *, max_bytes: int, ttl_s: float) -> None:
        nonlocal round_trips
        round_trips += 1
        await write(batch, max_bytes=max_bytes, ttl_s=ttl_s)

    store.write = counted_write  # type: ignore[method-assign]
    mirror = mirror_on(store, max_queued=10_000, on_trouble=print)
    steps = TaskSteps("mirror")
    millis = 200
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mirror.run, name="mirror")
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(steps)
        for ms in range(millis):
            mirror.add(frame("s1", ms))
            mirror.add(frame("s2", ms))
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(0.001)
        mock_clock.jump(COALESCE_S)
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    ticks = round(millis / 1000 / COALESCE_S)
    assert len(store.written) == 2 * millis
    assert [w.seq for w in store.written if w.session_id == "s1"] == list(range(millis))
    assert round_trips <= ticks + 2
    # A few steps per round trip (woken by the tick, the write's checkpoint), not
    # one per batch handed over (400 here).
    assert steps.steps <= 4 * (ticks + 2)
