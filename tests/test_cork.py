"""CorkableStream, and the writer's batches on top of it."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from testing_agents import endless
from wire import connect, only

from trio_agent import agents as builtin
from trio_agent.cork import CorkableStream


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


async def test_what_the_holder_sends_leaves_in_one_write_at_flush():
    inner = Recording()
    stream = CorkableStream(inner)
    stream.cork()
    for part in (b"a", b"bc", b"d"):
        await stream.send_all(part)
    assert inner.writes == []
    assert stream.kept_bytes == 4
    await stream.flush()
    assert inner.writes == [b"abcd"]
    await stream.send_all(b"e")  # the cork is released: straight through
    assert inner.writes == [b"abcd", b"e"]


async def test_another_task_sends_at_once_after_what_was_kept():
    inner = Recording()
    stream = CorkableStream(inner)
    stream.cork()
    await stream.send_all(b"kept")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"+pong")
    assert inner.writes == [b"kept+pong"]  # in call order, without waiting for a flush
    await stream.send_all(b"more")
    await stream.flush()
    assert inner.writes == [b"kept+pong", b"more"]


async def test_a_kept_send_is_a_cancellation_point():
    inner = Recording()
    stream = CorkableStream(inner)
    stream.cork()
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.send_all(b"never")
        pytest.fail("not cancelled")  # pragma: no cover
    assert stream.kept_bytes == 0


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
