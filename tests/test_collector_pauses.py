"""What keeps the garbage collector's full collections short (docs/performance.md,
"Tuning the hot path": a full collection walks every object of the oldest
generation while no session moves)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_agent.server import AgentServer
from trio_agent.server.config import ServerConfig
from trio_agent.server.replay import FrameSort, ReplayBuffer
from trio_agent.server.serving import freeze_startup_heap, serve_server


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Give the test process its frozen objects back afterwards."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_frames_held_for_a_resume_drop_out_of_the_collectors_sight() -> None:
    buffer = ReplayBuffer(64 * 1024)
    buffer.request_started("r1")
    for seq in range(2_000):
        buffer.written("r1", FrameSort.STREAM, seq, f'{{"seq":{seq},"delta":"word "}}')
    buffer.written("r1", FrameSort.DONE, -1, '{"msg_type":"DONE"}')
    # One collection untracks a tuple that holds only strings and numbers: what the
    # buffer holds then costs a full collection nothing, however many frames it is.
    gc.collect()
    held = list(buffer._held)
    assert len(held) > 500
    assert not any(gc.is_tracked(kept) for kept in held)
    # And the buffer still answers as before.
    replay = buffer.replay("r1", last_seq=1_998)
    assert replay.frames[-1] == '{"msg_type":"DONE"}'  # type: ignore[union-attr]
    assert len(replay.frames) == 2  # type: ignore[union-attr]


def test_a_frame_of_a_request_id_started_anew_is_not_charged_to_the_new_request() -> None:
    buffer = ReplayBuffer(100)
    buffer.request_started("r1")
    buffer.written("r1", FrameSort.STREAM, 0, "x" * 60)
    buffer.request_started("r1")  # the same id again: the old frames are nobody's
    buffer.written("r1", FrameSort.STREAM, 0, "y" * 60)  # evicts the old one
    replay = buffer.replay("r1", last_seq=-1)
    assert replay.frames == ("y" * 60,)  # type: ignore[union-attr]


def test_freeze_startup_heap_leaves_what_is_alive_out_of_later_collections(
    unfrozen: None,
) -> None:
    freeze_startup_heap()
    assert gc.get_freeze_count() > 1_000
    assert len(gc.get_objects(generation=2)) < gc.get_freeze_count()


async def test_a_served_server_freezes_its_start_up_heap_once_it_listens(
    unfrozen: None,
) -> None:
    server = AgentServer(ServerConfig(port=0, host="127.0.0.1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_server, server)
        await trio.testing.wait_all_tasks_blocked()
        assert server.port
        assert gc.get_freeze_count() > 1_000
        server.shutdown("test over")


async def test_an_embedding_application_can_keep_its_heap_as_it_is(unfrozen: None) -> None:
    server = AgentServer(ServerConfig(port=0, host="127.0.0.1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_server(server, freeze_heap=False))
        await trio.testing.wait_all_tasks_blocked()
        assert server.port
        assert gc.get_freeze_count() == 0
        server.shutdown("test over")
