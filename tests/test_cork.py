"""CorkableStream, and the writer's batches on top of it."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from testing_agents import endless

from trio_agent import agents as builtin
from trio_agent.server.cork import CorkableStream
from trio_agent.testing.wire import connect, only


class Recording(trio.abc.Stream):
    """An inner stream that records every send_all call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_what_is_kept_leaves_in_one_write_at_flush():
    inner = Recording()
    stream = CorkableStream(inner)
    for part in (b"a", b"bc", b"d"):
        stream.keep(part)
    assert inner.writes == []
    assert stream.kept_bytes == 4
    await stream.flush()
    assert inner.writes == [b"abcd"]
    assert stream.kept_bytes == 0
    await stream.send_all(b"e")  # nothing kept: straight through
    assert inner.writes == [b"abcd", b"e"]


async def test_another_send_goes_at_once_after_what_was_kept():
    inner = Recording()
    stream = CorkableStream(inner)
    stream.keep(b"kept")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"+pong")
    assert inner.writes == [b"kept+pong"]  # in call order, without waiting for a flush
    stream.keep(b"more")
    await stream.flush()
    assert inner.writes == [b"kept+pong", b"more"]


async def test_a_flush_is_a_checkpoint_even_with_nothing_kept():
    stream = CorkableStream(Recording())
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.flush()
        pytest.fail("not cancelled")  # pragma: no cover


async def test_a_flush_cancelled_before_it_writes_keeps_its_frames_for_the_next_send():
    # The writer counts a frame as written once it is kept; a flush cancelled
    # before any I/O must not lose it (a close frame sent next carries it).
    inner = Recording()
    cork = CorkableStream(inner)
    cork.keep(b"<frame 7>")
    with trio.CancelScope() as scope:
        scope.cancel()
        await cork.flush()
    assert scope.cancelled_caught
    assert inner.writes == []
    assert cork.kept_bytes == len(b"<frame 7>")
    await cork.send_all(b"<close>")
    assert inner.writes == [b"<frame 7><close>"]


async def test_a_send_waiting_for_the_lock_keeps_the_order_of_calls():
    """A flush in progress holds the lock; a send that arrives meanwhile goes after it,
    and what is kept during the flush goes with that send."""
    gate = trio.Event()

    class Slow(Recording):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            await gate.wait()
            self.writes.append(bytes(data))

    inner = Slow()
    stream = CorkableStream(inner)
    stream.keep(b"1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.flush)
        await trio.testing.wait_all_tasks_blocked()
        stream.keep(b"2")
        nursery.start_soon(stream.send_all, b"3")
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert inner.writes == [b"1", b"23"]


async def test_batched_writer_still_puts_the_ack_before_queued_frames(start_server, autojump_clock):
    """As test_g4 in test_session.py, with batches of 4: the frames of the batch being
    written may precede the ACK, the 16 queued ones do not."""
    agents = {"lorem": builtin.lorem, "endless": endless()}
    server = await start_server(agents, stream_lane_capacity=16, write_batch_frames=4)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("b", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM" and f["request_id"] == "b")
        await c.request("a", agent="lorem", words=1000, words_per_s=0)
        await c.recv_until(lambda f: f["msg_type"] == "STREAM" and f["request_id"] == "a")
        await trio.testing.wait_all_tasks_blocked()
        assert server.sessions[c.session_id].lanes.stream_depth == 16
        ack_id = await c.interrupt("b")
        before_ack = await c.until_ack(ack_id)
        assert len(only(before_ack, "STREAM", "a")) <= 3 + 2 * 4
        await c.interrupt("a")
        await c.until_done("a")
        c.assert_guarantees()
