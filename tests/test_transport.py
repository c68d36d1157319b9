"""GuardedStream: a write must make progress, and a half-written stream is aborted."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from trio_agent.server.transport import PROGRESS_CHUNK, GuardedStream, SendStalled


def lockstep(send_timeout_s: float = 1.0) -> tuple[GuardedStream, trio.abc.Stream]:
    """A guarded end whose writes complete only as fast as the other end reads."""
    ours, theirs = trio.testing.lockstep_stream_pair()
    return GuardedStream(ours, send_timeout_s=send_timeout_s), theirs


async def test_a_slow_but_steady_reader_is_not_a_stalled_one(autojump_clock):
    """The deadline is per piece of progress, not for the whole write: 8 pieces at
    0.9 s each take 7.2 s against a 1 s timeout, and that is fine."""
    guarded, peer = lockstep(send_timeout_s=1.0)
    data = b"x" * (8 * PROGRESS_CHUNK)
    received = bytearray()

    async def slow_reader() -> None:
        while len(received) < len(data):
            await trio.sleep(0.9)
            received.extend(await peer.receive_some(PROGRESS_CHUNK))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_reader)
        await guarded.send_all(data)
    assert bytes(received) == data
    assert trio.current_time() == pytest.approx(7.2)
    assert not guarded.stalled
    assert not guarded.broken


async def test_no_progress_for_the_timeout_raises_send_stalled_and_breaks_the_stream(
    autojump_clock,
):
    guarded, _peer = lockstep(send_timeout_s=2.0)
    with pytest.raises(SendStalled, match="no write progress for 2 s"):
        await guarded.send_all(b"frame")
    assert trio.current_time() == 2.0
    assert guarded.stalled
    assert guarded.broken
    # Part of a frame may be on the wire: nothing more may follow it.
    with pytest.raises(trio.BrokenResourceError):
        await guarded.send_all(b"close frame")
    assert isinstance(SendStalled("x"), trio.BrokenResourceError)


async def test_a_cancelled_write_breaks_the_stream_too(autojump_clock):
    guarded, _peer = lockstep(send_timeout_s=0)  # no timeout
    with trio.move_on_after(5):
        await guarded.send_all(b"frame")
    assert guarded.broken
    assert not guarded.stalled


def socket_pair() -> tuple[trio.SocketStream, socket.socket]:
    """A connected pair with small buffers: ours for the GuardedStream, theirs to read."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def test_a_write_cancelled_before_it_starts_leaves_the_stream_whole():
    ours, theirs = socket_pair()
    guarded = GuardedStream(ours, send_timeout_s=1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await guarded.send_all(b"frame")
    assert scope.cancelled_caught
    assert not guarded.broken
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # nothing of it reached the socket
    await guarded.send_all(b"next")
    assert theirs.recv(100) == b"next"
    theirs.close()
    await guarded.aclose()


async def test_a_second_write_during_a_waiting_one_is_refused_not_cut_into_it():
    # The direct write on a plain TCP socket must not slip its bytes into the
    # middle of a write that waits for room: SocketStream refuses a second send.
    ours, theirs = socket_pair()
    guarded = GuardedStream(ours, send_timeout_s=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded.send_all, b"A" * (1 << 20))
        await trio.testing.wait_all_tasks_blocked()  # part written, waiting for room
        theirs.recv(1 << 16)  # room appears before the first write runs again
        with pytest.raises(trio.BusyResourceError):
            await guarded.send_all(b"Z")
        nursery.cancel_scope.cancel()
    theirs.close()


async def test_a_completed_write_keeps_the_stream_whole():
    ours, theirs = trio.testing.memory_stream_pair()
    guarded = GuardedStream(ours, send_timeout_s=1)
    await guarded.send_all(b"")
    await guarded.send_all(b"hello")
    assert await theirs.receive_some() == b"hello"
    assert not guarded.broken
    await guarded.aclose()


async def test_the_peer_leaving_cancels_the_watched_scope():
    ours, theirs = trio.testing.memory_stream_pair()
    guarded = GuardedStream(ours, send_timeout_s=1)
    with guarded.cancel_if_peer_leaves() as scope:
        await theirs.send_all(b"GET /")
        assert await guarded.receive_some() == b"GET /"
        await theirs.aclose()
        assert await guarded.receive_some() == b""
        await trio.sleep_forever()
    assert scope.cancelled_caught
    assert guarded.peer_gone
    # Already gone: a new watch is cancelled from the start.
    with guarded.cancel_if_peer_leaves() as scope:
        await trio.sleep_forever()
    assert scope.cancelled_caught
