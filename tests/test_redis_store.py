"""The cluster's store on a real redis-server (or valkey-server), on loopback.

Each test gets a store with a key prefix of its own on the module's server; the
tests that kill the server run one of their own. They check what the node relies
on: atomic take-overs and claims with exactly one winner, frames that come back in
order and of the type they went in, bounded streams and TTLs, a blocked read that
wakes, times out and can be cancelled without harm, and a store that fails fast
with StoreUnavailable when Redis is gone and works again when it is back.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import coredis
import pytest
import trio
import trio.testing

from trio_agent.cluster.redis_store import RedisStore, open_redis_store
from trio_agent.cluster.store import (
    ControlMessage,
    FrameWrite,
    RequestEnded,
    RequestStarted,
    SessionSeen,
    StoredSort,
    StoreUnavailable,
    TakeOver,
    TakeOverVerdict,
)
from trio_agent.testing.processes import RedisServer, redis_executable, redis_server

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(
        redis_executable() is None,
        reason="redis tests skipped: neither redis-server nor valkey-server is installed "
        "(Debian: apt-get install redis-server)",
    ),
]

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisStore]:
    async with open_redis_store(redis.url, prefix=f"t{next(_prefixes)}") as opened:
        yield opened


@pytest.fixture
async def raw(redis: RedisServer) -> AsyncIterator[Any]:
    """A plain client, to look at the keys the store wrote."""
    client = coredis.Redis.from_url(redis.url, decode_responses=True)
    async with client:
        yield client


def stream(session: str, request: str, seq: int, data: str | bytes = "x") -> FrameWrite:
    sort = StoredSort.AUDIO if isinstance(data, bytes) else StoredSort.STREAM
    return FrameWrite(session, request, sort, seq, data, "node-a")


def done(session: str, request: str, frames: int) -> FrameWrite:
    return FrameWrite(
        session, request, StoredSort.DONE, -1, '{"msg_type":"DONE"}', "node-a", frames
    )


async def redis_now_ms(raw: Any) -> int:
    """Redis's clock (``TIME``), which the store's deadlines are reckoned in."""
    return int((await raw.time()).timestamp() * 1000)


async def open_one(store: RedisStore, session: str = "s1", token: str = "d1") -> None:
    await store.open_session(session, owner="node-a", token_digest=token, ttl_s=60)


async def take_over_by_b(store: RedisStore, session: str = "s1") -> TakeOver:
    """node-b resumes ``session`` with the token :func:`open_one` gave it."""
    return await store.take_over(
        session, token_digest="d1", new_token_digest="d2", node_id="node-b", max_denied=5
    )


# -- liveness ----------------------------------------------------------------------


async def test_a_lease_lives_for_its_ttl_and_goes_when_released(
    store: RedisStore, raw: Any
) -> None:
    await store.hold_lease("node-a", 3.0)
    key = store.lease_key("node-a")
    assert await store.node_alive("node-a")
    assert not await store.node_alive("node-b")
    assert 2000 < await raw.pttl(key) <= 3000
    started = await raw.get(key)
    await store.hold_lease("node-a", 9.0)
    assert 8000 < await raw.pttl(key) <= 9000
    assert await raw.get(key) == started  # the value is when the node first held it
    assert abs(int(started) - time.time() * 1000) < 60_000
    await store.release_lease("node-a")
    assert not await store.node_alive("node-a")


async def test_a_lease_that_is_not_refreshed_expires(store: RedisStore) -> None:
    await store.hold_lease("node-a", 0.2)
    assert await store.node_alive("node-a")
    await trio.sleep(0.3)  # the expiry itself is what is tested
    assert not await store.node_alive("node-a")


# -- sessions and take-overs -------------------------------------------------------


async def test_take_over_with_the_current_token(store: RedisStore, raw: Any) -> None:
    await open_one(store)
    record = store.keys("s1")[0]
    assert (await raw.hgetall(record))["epoch"] == "1"
    await store.save_agent_state("s1", '{"history": []}')
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.OK
    assert (taken.epoch, taken.previous_owner, taken.agent_state) == (
        2,
        "node-a",
        '{"history": []}',
    )
    fields = await raw.hgetall(record)
    assert (fields["owner"], fields["digest"], fields["epoch"]) == ("node-b", "d2", "2")
    # The old token is spent (node-b, which spent it, lives); the new one works, and
    # says who held the session.
    await store.hold_lease("node-b", 30.0)
    spent = await store.take_over(
        "s1", token_digest="d1", new_token_digest="d3", node_id="node-c", max_denied=5
    )
    assert spent.verdict is TakeOverVerdict.SPENT
    again = await store.take_over(
        "s1", token_digest="d2", new_token_digest="d3", node_id="node-c", max_denied=5
    )
    assert (again.verdict, again.epoch, again.previous_owner) == (TakeOverVerdict.OK, 3, "node-b")


async def test_a_token_spent_by_a_node_that_died_is_accepted_once_more(
    store: RedisStore, raw: Any
) -> None:
    await open_one(store)
    await store.hold_lease("node-b", 30.0)
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.OK
    # node-b is killed before its RESUMED (with d2) reaches the client, which holds d1.
    live = await store.take_over(
        "s1", token_digest="d1", new_token_digest="d3", node_id="node-c", max_denied=5
    )
    assert live.verdict is TakeOverVerdict.SPENT
    await store.release_lease("node-b")  # its lease is gone: node-b is dead
    rescued = await store.take_over(
        "s1", token_digest="d1", new_token_digest="d3", node_id="node-c", max_denied=5
    )
    assert rescued.verdict is TakeOverVerdict.OK
    assert (rescued.epoch, rescued.previous_owner) == (3, "node-b")
    fields = await raw.hgetall(store.keys("s1")[0])
    assert (fields["owner"], fields["digest"], fields["spent"]) == ("node-c", "d3", "d1")
    assert fields["denied"] == "0"  # a spent token is not a wrong one


async def test_of_two_resumes_with_a_rescued_token_one_wins(store: RedisStore) -> None:
    await open_one(store)
    taken = await store.take_over(
        "s1", token_digest="d1", new_token_digest="d2", node_id="node-dead", max_denied=5
    )
    assert taken.verdict is TakeOverVerdict.OK
    await store.hold_lease("node-c", 30.0)
    await store.hold_lease("node-d", 30.0)
    verdicts = [
        (
            await store.take_over(
                "s1", token_digest="d1", new_token_digest=f"d{n}", node_id=node, max_denied=5
            )
        ).verdict
        for n, node in ((3, "node-c"), (4, "node-d"))
    ]
    assert verdicts == [TakeOverVerdict.OK, TakeOverVerdict.SPENT]
    # A token superseded by a later successful RESUME is never accepted again.
    again = await store.take_over(
        "s1", token_digest="d3", new_token_digest="d5", node_id="node-d", max_denied=5
    )
    assert again.verdict is TakeOverVerdict.OK
    await store.release_lease("node-c")
    await store.release_lease("node-d")
    old = await store.take_over(
        "s1", token_digest="d1", new_token_digest="d6", node_id="node-e", max_denied=5
    )
    assert old.verdict is TakeOverVerdict.DENIED


async def test_set_token_replaces_the_digest(store: RedisStore) -> None:
    await open_one(store)
    await store.set_token("s1", "d9")
    taken = await store.take_over(
        "s1", token_digest="d9", new_token_digest="d10", node_id="node-b", max_denied=5
    )
    assert taken.verdict is TakeOverVerdict.OK
    assert taken.agent_state is None


async def test_an_unknown_session_is_unknown_and_updates_create_nothing(
    store: RedisStore, raw: Any
) -> None:
    taken = await take_over_by_b(store, "nope")
    assert taken.verdict is TakeOverVerdict.UNKNOWN
    await store.set_token("nope", "d3")
    await store.save_agent_state("nope", "{}")
    await store.detach("nope", window_s=30, owner="node-a")
    assert await raw.exists(store.keys("nope")) == 0


async def test_a_session_past_its_deadline_is_unknown(store: RedisStore, raw: Any) -> None:
    await open_one(store)
    past = await redis_now_ms(raw) - 1
    await raw.hset(store.keys("s1")[0], {"deadline_ms": str(past)})
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.UNKNOWN


async def test_detach_sets_the_deadline_and_the_ttls_and_a_take_over_restores_them(
    store: RedisStore, raw: Any
) -> None:
    await open_one(store)
    await store.write(
        [stream("s1", "r1", 0), RequestStarted("s1", "r1", "node-a")], max_bytes=1_000_000, ttl_s=60
    )
    await store.record_cut("s1", "r1", "m1", ttl_s=60)
    assert await store.detach("s1", window_s=30, owner="node-a")
    record = store.keys("s1")[0]
    deadline = int((await raw.hgetall(record))["deadline_ms"])
    assert 29_000 < deadline - await redis_now_ms(raw) <= 31_000  # TIME in whole seconds
    for key in store.keys("s1")[:4]:
        assert 30_000 < await raw.pttl(key) <= 35_000, key
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.OK
    assert (await raw.hgetall(record))["deadline_ms"] == ""
    for key in store.keys("s1")[:4]:
        assert 55_000 < await raw.pttl(key) <= 60_000, key


async def test_a_late_detach_by_the_previous_owner_leaves_the_new_owners_session_alone(
    store: RedisStore, raw: Any
) -> None:
    # node-a's client dropped, node-b took the session over, and node-a's DETACH (queued
    # in its mirror) lands only now: it must not give node-b's attached session a deadline.
    await open_one(store)
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.OK
    record = store.keys("s1")[0]
    before = await raw.pttl(record)
    assert not await store.detach("s1", window_s=1, owner="node-a")
    fields = await raw.hgetall(record)
    assert fields["owner"] == "node-b"
    assert fields.get("deadline_ms", "") == ""
    assert await raw.pttl(record) > 1_000 + 5_000
    assert before > 1_000 + 5_000
    assert await store.detach("s1", window_s=30, owner="node-b")
    assert int((await raw.hgetall(record))["deadline_ms"]) > 0


async def test_a_late_close_by_the_previous_owner_leaves_the_new_owners_session_alone(
    store: RedisStore, raw: Any
) -> None:
    # node-a never heard that node-b took the session over (the store was out of its
    # reach), its window ran out, and its close waited in its mirror until the store
    # answered again: node-b's keys must stay.
    await open_one(store)
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.OK
    await store.write([stream("s1", "r1", 0)], max_bytes=1_000_000, ttl_s=60)
    assert not await store.close_session("s1", owner="node-a")
    assert (await raw.hgetall(store.keys("s1")[0]))["owner"] == "node-b"
    assert [f.seq for f in await store.read_frames("s1")] == [0]
    assert await store.close_session("s1", owner="node-b")
    assert await raw.exists(store.keys("s1")) == 0
    # Keys that no record names an owner of (a record already gone) go for anybody.
    await store.write([stream("s2", "r1", 0)], max_bytes=1_000_000, ttl_s=60)
    assert await raw.exists(store.keys("s2")) > 0
    assert await store.close_session("s2", owner="node-a")
    assert await raw.exists(store.keys("s2")) == 0


async def test_a_rewrite_by_the_previous_owner_leaves_the_new_owners_session_alone(
    store: RedisStore, raw: Any
) -> None:
    # node-b took the session over while node-a could not reach the store (its "moved"
    # message lost); the store answers node-a again, and node-a writes the sessions it
    # holds anew, this one at its epoch 1: node-b's record and frames must stay.
    await open_one(store)
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.OK
    await store.write(
        [RequestStarted("s1", "r1", "node-b"), stream("s1", "r1", 0)],
        max_bytes=1_000_000,
        ttl_s=60,
    )
    record = store.keys("s1")[0]
    assert not await store.open_session("s1", owner="node-a", token_digest="d1", ttl_s=60, epoch=1)
    fields = await raw.hgetall(record)
    assert (fields["owner"], fields["epoch"], fields["digest"]) == ("node-b", "2", "d2")
    assert [f.seq for f in await store.read_frames("s1")] == [0]
    assert await store.running_requests("s1") == {"r1": "node-b"}
    # Nor at the same epoch by another node; the owner itself rewrites it.
    assert not await store.open_session("s1", owner="node-c", token_digest="x", ttl_s=60, epoch=2)
    assert await store.open_session("s1", owner="node-b", token_digest="d2", ttl_s=60, epoch=2)
    assert await store.read_frames("s1") == []  # replaced by what node-b writes next
    assert (await raw.hgetall(record))["epoch"] == "2"


async def test_after_a_restart_the_newest_owners_rewrite_wins(store: RedisStore, raw: Any) -> None:
    # Redis restarted empty after node-b took the session over (epoch 2) from node-a,
    # which never heard of it: both write the session anew, in either order.
    record = store.keys("s1")[0]
    assert await store.open_session("s1", owner="node-a", token_digest="d1", ttl_s=60, epoch=1)
    assert await store.open_session("s1", owner="node-b", token_digest="d2", ttl_s=60, epoch=2)
    assert not await store.open_session("s1", owner="node-a", token_digest="d1", ttl_s=60, epoch=1)
    fields = await raw.hgetall(record)
    assert (fields["owner"], fields["epoch"], fields["digest"]) == ("node-b", "2", "d2")
    assert 55_000 < await raw.pttl(record) <= 60_000


async def test_wrong_tokens_are_denied_and_too_many_deny_the_right_one(
    store: RedisStore, raw: Any
) -> None:
    await open_one(store)
    for _ in range(3):
        wrong = await store.take_over(
            "s1", token_digest="bad", new_token_digest="d2", node_id="node-b", max_denied=3
        )
        assert wrong.verdict is TakeOverVerdict.DENIED
    assert (await raw.hgetall(store.keys("s1")[0]))["denied"] == "3"
    right = await store.take_over(
        "s1", token_digest="d1", new_token_digest="d2", node_id="node-b", max_denied=3
    )
    assert right.verdict is TakeOverVerdict.DENIED


async def test_two_take_overs_with_the_same_token_have_one_winner(store: RedisStore) -> None:
    async def resume(session: str, node: str, verdicts: dict[str, TakeOverVerdict]) -> None:
        taken = await store.take_over(
            session, token_digest="d1", new_token_digest=node, node_id=node, max_denied=5
        )
        verdicts[node] = taken.verdict

    # Racing nodes are alive: the loser finds the token spent by a live node.
    await store.hold_lease("node-b", 30.0)
    await store.hold_lease("node-c", 30.0)
    for round_ in range(5):
        session = f"race{round_}"
        await open_one(store, session)
        verdicts: dict[str, TakeOverVerdict] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resume, session, "node-b", verdicts)
            nursery.start_soon(resume, session, "node-c", verdicts)
        assert sorted(v.value for v in verdicts.values()) == ["ok", "spent"]


async def test_close_session_deletes_every_key(store: RedisStore, raw: Any) -> None:
    await open_one(store)
    await store.write(
        [stream("s1", "r1", 0), RequestStarted("s1", "r1", "node-a"), SessionSeen("s1")],
        max_bytes=1_000_000,
        ttl_s=60,
    )
    await store.record_cut("s1", "r1", "m1", ttl_s=60)
    assert await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-b")
    assert await raw.exists(store.keys("s1")) == 6
    await store.close_session("s1", owner="node-a")
    assert await raw.exists(store.keys("s1")) == 0
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.UNKNOWN


async def test_a_late_refresh_after_close_does_not_bring_the_session_back(
    store: RedisStore, raw: Any
) -> None:
    await open_one(store)
    await store.close_session("s1", owner="node-a")
    await store.write([SessionSeen("s1")], max_bytes=1_000_000, ttl_s=60)
    assert await raw.exists(store.keys("s1")) == 0
    await store.write([stream("s1", "r1", 0)], max_bytes=1_000_000, ttl_s=60)
    for key in store.keys("s1"):
        assert await raw.pttl(key) != -1, key  # nothing without a TTL
    taken = await take_over_by_b(store)
    assert taken.verdict is TakeOverVerdict.UNKNOWN


# -- frames ------------------------------------------------------------------------


async def test_frames_come_back_in_order_with_their_type(store: RedisStore, raw: Any) -> None:
    await open_one(store)
    audio = bytes(range(256))
    await store.write(
        [
            RequestStarted("s1", "r1", "node-a"),
            stream("s1", "r1", 0, '{"msg_type":"STREAM","text":"é"}'),
            stream("s1", "r1", 1, audio),
            done("s1", "r1", 2),
            RequestEnded("s1", "r1"),
        ],
        max_bytes=1_000_000,
        ttl_s=60,
    )
    frames = await store.read_frames("s1")
    assert [(f.request_id, f.sort, f.seq, f.frames) for f in frames] == [
        ("r1", StoredSort.STREAM, 0, -1),
        ("r1", StoredSort.AUDIO, 1, -1),
        ("r1", StoredSort.DONE, -1, 2),
    ]
    assert frames[0].data == '{"msg_type":"STREAM","text":"é"}'
    assert frames[1].data == audio
    assert isinstance(frames[2].data, str)
    assert {f.node_id for f in frames} == {"node-a"}
    # The frames of one write batch are one stream entry (one XADD): read after it,
    # nothing; a later batch is a later entry.
    assert len({f.entry_id for f in frames}) == 1
    assert await store.read_frames("s1", after=frames[-1].entry_id) == []
    await store.write([stream("s1", "r2", 0)], max_bytes=1_000_000, ttl_s=60)
    later = await store.read_frames("s1", after=frames[-1].entry_id)
    assert [(f.request_id, f.seq) for f in later] == [("r2", 0)]
    assert await store.read_frames("other") == []
    for key in store.keys("s1")[:2]:
        assert 55_000 < await raw.pttl(key) <= 60_000
    last_seen = int((await raw.hgetall(store.keys("s1")[0]))["last_seen_ms"])
    assert abs(last_seen - time.time() * 1000) < 60_000


async def test_the_stream_is_bounded_in_bytes_the_oldest_batches_going_first(
    store: RedisStore, raw: Any
) -> None:
    await open_one(store)
    # Batches of different sizes (one entry each): the bound is in bytes, whatever
    # the number of frames an entry holds.
    for batch in range(20):
        size = 1 if batch % 2 else 50
        await store.write(
            [stream("s1", "r1", batch * 50 + i, "x" * 40) for i in range(size)],
            max_bytes=6_000,
            ttl_s=60,
        )
    frames = await store.read_frames("s1")
    held = sum(len(f.data) + 16 + len(f.request_id) for f in frames)
    assert 0 < held <= 6_000
    assert held > 6_000 - 50 * 58  # (at most one batch less than the bound)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs)
    assert seqs[-1] == 19 * 50  # the newest is kept; the oldest went first
    assert int(await raw.get(store.keys("s1")[-1])) == held


async def test_the_frames_of_many_sessions_are_one_command_each_stream_its_own(
    store: RedisStore, raw: Any
) -> None:
    """A round trip's frames of every session go in one ``APPEND_FRAMES`` call: each
    session's stream gets its own frames, in order, bounded on its own; a request's
    start or end still lands after the frames written before it."""
    for session in ("s1", "s2", "s3"):
        await open_one(store, session)
    evals_before = await _eval_calls(raw)
    await store.write(
        [
            stream("s1", "r1", 0),
            stream("s2", "r2", 0, "y" * 40),
            stream("s1", "r1", 1),
            stream("s3", "r3", 0, b"audio"),
            stream("s2", "r2", 1, "y" * 40),
            stream("s2", "r2", 2, "y" * 40),
        ],
        max_bytes=130,  # s2's three frames (58 bytes each) do not fit: the oldest go
        ttl_s=60,
    )
    assert await _eval_calls(raw) - evals_before == 1 + 3  # one append, one touch each
    assert [(f.request_id, f.seq) for f in await store.read_frames("s1")] == [
        ("r1", 0),
        ("r1", 1),
    ]
    assert await store.read_frames("s2") == []  # one entry of 174 bytes > 130: gone
    assert [f.data for f in await store.read_frames("s3")] == [b"audio"]
    # A request that ends in the batch: its DONE is in the stream before the request
    # book forgets it, and the other sessions' frames are not held back by it.
    await store.write(
        [
            RequestStarted("s1", "r4", "node-a"),
            stream("s3", "r3", 1, b"more"),
            stream("s1", "r4", 0),
            done("s1", "r4", 1),
            RequestEnded("s1", "r4"),
            stream("s3", "r3", 2, b"last"),
        ],
        max_bytes=1_000_000,
        ttl_s=60,
    )
    assert [(f.request_id, f.sort) for f in (await store.read_frames("s1"))[2:]] == [
        ("r4", StoredSort.STREAM),
        ("r4", StoredSort.DONE),
    ]
    assert await store.running_requests("s1") == {}
    assert [f.data for f in await store.read_frames("s3")] == [b"audio", b"more", b"last"]
    for session in ("s1", "s2", "s3"):
        assert 55_000 < await raw.pttl(store.keys(session)[1]) <= 60_000


async def _eval_calls(raw: Any) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_eval", {}).get("calls", 0))


async def test_wait_frames_wakes_on_a_write_from_another_task(store: RedisStore) -> None:
    await open_one(store)
    await store.write([stream("s1", "r1", 0)], max_bytes=1_000_000, ttl_s=60)
    (first,) = await store.read_frames("s1")
    got: list[Any] = []

    async def wait() -> None:
        started = time.monotonic()
        got.extend(await store.wait_frames("s1", first.entry_id, timeout_s=20))
        got.append(time.monotonic() - started)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        # While it blocks, the other calls go on.
        with trio.fail_after(2):
            for _ in range(20):
                await store.running_requests("s1")
        await store.write(
            [stream("s1", "r1", 1), stream("s1", "r1", 2)], max_bytes=1_000_000, ttl_s=60
        )
    *frames, elapsed = got
    # Redis wakes the read after the first XADD of the pipeline, or after both.
    assert [f.seq for f in frames] in ([1], [1, 2])
    assert elapsed < 10


async def test_wait_frames_times_out_with_nothing(store: RedisStore) -> None:
    await open_one(store)
    started = time.monotonic()
    assert await store.wait_frames("s1", "0", timeout_s=0.2) == []
    assert 0.15 < time.monotonic() - started < 2
    assert await store.wait_frames("s1", "0", timeout_s=0) == []


async def test_a_cancelled_wait_leaves_the_store_usable(redis: RedisServer) -> None:
    # Two connections for blocked reads: cancelling more waits than that would use
    # up the pool if a cancelled read kept its slot.
    async with open_redis_store(redis.url, prefix="cancel", max_waiters=2) as store:
        await open_one(store)
        # Cut at once, mid-connect or mid-read: each ends as a plain cancellation.
        for attempt in range(6):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(store.wait_frames, "s1", "0", timeout_s=20))
                    for _ in range(attempt % 3):
                        await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                got: list[Any] = []

                async def wait() -> None:
                    got.extend(await store.wait_frames("s1", "0", timeout_s=20))

                nursery.start_soon(wait)
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                await store.write([stream("s1", "r1", 0)], max_bytes=1_000_000, ttl_s=60)
        assert [f.seq for f in got] == [0, 0]


# -- requests, claims and cuts -----------------------------------------------------


async def test_running_requests_follow_started_and_ended(store: RedisStore) -> None:
    await open_one(store)
    assert await store.running_requests("s1") == {}
    await store.write(
        [RequestStarted("s1", "r1", "node-a"), RequestStarted("s1", "r2", "node-b")],
        max_bytes=1_000_000,
        ttl_s=60,
    )
    assert await store.running_requests("s1") == {"r1": "node-a", "r2": "node-b"}
    await store.write([RequestEnded("s1", "r1")], max_bytes=1_000_000, ttl_s=60)
    assert await store.running_requests("s1") == {"r2": "node-b"}


async def test_read_session_reads_the_stream_and_the_request_book_at_once(
    store: RedisStore,
) -> None:
    await open_one(store)
    assert await store.read_session("s1") == ([], {})
    await store.write(
        [RequestStarted("s1", "r1", "node-a"), stream("s1", "r1", 0), stream("s1", "r1", 1)],
        max_bytes=1_000_000,
        ttl_s=60,
    )
    frames, running = await store.read_session("s1")
    assert frames == await store.read_frames("s1")
    assert [f.seq for f in frames] == [0, 1]
    assert running == await store.running_requests("s1") == {"r1": "node-a"}


async def test_one_claimer_wins_and_only_for_the_node_named(store: RedisStore) -> None:
    await open_one(store)
    await store.write([RequestStarted("s1", "r1", "node-a")], max_bytes=1_000_000, ttl_s=60)
    claimers = [f"node-{i}" for i in range(10)]
    for claimer in claimers:
        await store.hold_lease(claimer, 30.0)
    assert not await store.claim_request("s1", "r1", dead_node="node-b", claimer="node-0")
    assert not await store.claim_request("s1", "r9", dead_node="node-a", claimer="node-0")
    wins: dict[str, bool] = {}

    async def claim(claimer: str) -> None:
        wins[claimer] = await store.claim_request("s1", "r1", dead_node="node-a", claimer=claimer)

    async with trio.open_nursery() as nursery:
        for claimer in claimers:
            nursery.start_soon(claim, claimer)
    assert sorted(wins.values()) == [False] * 9 + [True]
    # The request still has no DONE: it stays in the book until the winner ends it.
    assert await store.running_requests("s1") == {"r1": "node-a"}
    await store.write(
        [done("s1", "r1", 0), RequestEnded("s1", "r1")], max_bytes=1_000_000, ttl_s=60
    )
    assert not await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-0")
    # The id, reused by a new request on a node that dies too, can be claimed again.
    await store.write([RequestStarted("s1", "r1", "node-a")], max_bytes=1_000_000, ttl_s=60)
    assert await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-0")


async def test_a_claim_is_taken_over_only_once_its_claimer_is_dead(
    store: RedisStore, raw: Any
) -> None:
    await open_one(store)
    await store.write([RequestStarted("s1", "r1", "node-a")], max_bytes=1_000_000, ttl_s=60)
    for node in ("node-b", "node-c"):
        await store.hold_lease(node, 30.0)
    claims = store.keys("s1")[4]
    assert await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-b")
    assert await raw.hget(claims, "r1") == "node-b"  # the claim names its claimer
    # node-b lives (it is storing its DONE): its claim holds, for others and itself.
    assert not await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-c")
    assert not await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-b")
    # node-b dies before its DONE is stored: the claim is node-c's, once.
    await store.release_lease("node-b")
    assert await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-c")
    assert await raw.hget(claims, "r1") == "node-c"
    assert not await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-c")
    assert await raw.pttl(claims) > 0  # the claim keeps a TTL
    # Of many live claimers of a dead claimer's claim, exactly one wins (and a node
    # never wins its own claim twice, even when its lease lapsed).
    await store.release_lease("node-c")
    assert not await store.claim_request("s1", "r1", dead_node="node-a", claimer="node-c")
    claimers = [f"node-{i}" for i in range(10)]
    for claimer in claimers:
        await store.hold_lease(claimer, 30.0)
    wins: dict[str, bool] = {}

    async def claim(claimer: str) -> None:
        wins[claimer] = await store.claim_request("s1", "r1", dead_node="node-a", claimer=claimer)

    async with trio.open_nursery() as nursery:
        for claimer in claimers:
            nursery.start_soon(claim, claimer)
    assert sorted(wins.values()) == [False] * 9 + [True]
    assert await raw.hget(claims, "r1") == next(c for c, won in wins.items() if won)


async def test_cuts_are_recorded_with_a_ttl(store: RedisStore, raw: Any) -> None:
    await open_one(store)
    assert await store.cuts("s1") == {}
    await store.record_cut("s1", "r1", "m1", ttl_s=30)
    await store.record_cut("s1", "r2", "m1", ttl_s=30)
    assert await store.cuts("s1") == {"r1": "m1", "r2": "m1"}
    assert 25_000 < await raw.pttl(store.keys("s1")[3]) <= 30_000


# -- control channels --------------------------------------------------------------


async def test_control_messages_round_trip(store: RedisStore, raw: Any) -> None:
    sent = [
        ControlMessage(
            "interrupt", "s1", "node-b", msg_id="m1", request_ids=("r1", "r2"), reason="user"
        ),
        ControlMessage("moved", "s1", "node-c", epoch=3, extra={"why": "resumed"}),
    ]
    async with store.control_messages("node-a") as messages:
        await raw.publish(store.control_channel("node-a"), "not json")
        await raw.publish(store.control_channel("node-a"), json.dumps({"kind": "nope"}))
        for message in sent:
            await store.send_control("node-a", message)
        await store.send_control("node-z", sent[0])  # another node's channel
        received = []
        with trio.fail_after(5):
            async for message in messages:
                received.append(message)
                if len(received) == len(sent):
                    break
    assert received == sent
    assert received[0].request_ids == ("r1", "r2")


async def test_an_error_in_the_body_comes_out_as_it_is(redis: RedisServer) -> None:
    async def fail() -> None:
        async with open_redis_store(redis.url, prefix="body") as store:  # noqa: SIM117
            async with store.control_messages("node-a"):
                raise KeyError("the body's own")

    with pytest.raises(KeyError):
        await fail()


# -- a Redis that goes away --------------------------------------------------------


async def test_a_dead_redis_fails_every_call_fast_and_a_restarted_one_works_again() -> None:
    with redis_server() as server:
        async with open_redis_store(server.url, prefix="dead") as store:
            await open_one(store)
            await store.hold_lease("node-a", 3)
            broken: list[BaseException] = []

            async def subscribed(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    async with store.control_messages("node-a") as messages:
                        task_status.started()
                        async for _ in messages:
                            pass
                except StoreUnavailable as error:
                    broken.append(error)

            async def waiting(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                task_status.started()
                try:
                    await store.wait_frames("s1", "0", timeout_s=30)
                except StoreUnavailable as error:
                    broken.append(error)

            # A subscription and a blocked read, when Redis dies, both end on their own.
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    await nursery.start(subscribed)
                    await nursery.start(waiting)
                    await trio.testing.wait_all_tasks_blocked()
                    server.kill()
            assert len(broken) == 2

            calls = {
                "hold_lease": lambda: store.hold_lease("node-a", 3),
                "release_lease": lambda: store.release_lease("node-a"),
                "node_alive": lambda: store.node_alive("node-a"),
                "send_control": lambda: store.send_control(
                    "node-b", ControlMessage("moved", "s1", "node-a")
                ),
                "open_session": lambda: open_one(store, "s2"),
                "take_over": lambda: store.take_over(
                    "s1", token_digest="d1", new_token_digest="d2", node_id="b", max_denied=5
                ),
                "set_token": lambda: store.set_token("s1", "d3"),
                "detach": lambda: store.detach("s1", window_s=30, owner="node-a"),
                "close_session": lambda: store.close_session("s1", owner="node-a"),
                "save_agent_state": lambda: store.save_agent_state("s1", "{}"),
                "write": lambda: store.write(
                    [stream("s1", "r1", 0)], max_bytes=1_000_000, ttl_s=60
                ),
                "read_frames": lambda: store.read_frames("s1"),
                "wait_frames": lambda: store.wait_frames("s1", "0", timeout_s=10),
                "running_requests": lambda: store.running_requests("s1"),
                "claim_request": lambda: store.claim_request(
                    "s1", "r1", dead_node="a", claimer="b"
                ),
                "record_cut": lambda: store.record_cut("s1", "r1", "m1", ttl_s=60),
                "cuts": lambda: store.cuts("s1"),
            }
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert time.monotonic() - started < 2, name
            with pytest.raises(StoreUnavailable):
                async with store.control_messages("node-a"):
                    pass

            server.restart()  # an empty Redis on the same port; the same store object
            await open_one(store)
            await store.hold_lease("node-a", 3)
            assert await store.node_alive("node-a")
            taken = await take_over_by_b(store)  # the script is loaded again (NOSCRIPT)
            assert taken.verdict is TakeOverVerdict.OK
            await store.write([stream("s1", "r1", 0)], max_bytes=1_000_000, ttl_s=60)
            assert [f.seq for f in await store.wait_frames("s1", "0", timeout_s=5)] == [0]
            async with store.control_messages("node-a") as messages:
                await store.send_control("node-a", ControlMessage("moved", "s1", "node-b"))
                with trio.fail_after(5):
                    assert (await messages.__anext__()).from_node == "node-b"


async def test_a_silent_redis_fails_calls_in_time_and_a_cancelled_call_is_only_cancelled() -> None:
    # A listening socket nobody answers on: connections are made, replies never come.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        async with open_redis_store(url, prefix="silent", timeout_s=0.3) as store:
            for call in (
                lambda: store.node_alive("node-a"),
                lambda: store.write([stream("s1", "r1", 0)], max_bytes=1_000_000, ttl_s=60),
                lambda: store.wait_frames("s1", "0", timeout_s=0.3),
            ):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert time.monotonic() - started < 2
            # Cut while it waits for the server's hello: a cancellation, not an error.
            for call in (
                lambda: store.node_alive("node-a"),
                lambda: store.wait_frames("s1", "0", timeout_s=5),
            ):
                with trio.move_on_after(0.1) as scope:
                    await call()
                assert scope.cancelled_caught
