"""Two or three nodes of a cluster in one process, on a real redis-server.

A session opened on node A is resumed on node B: B replays what the client missed
from the store and relays what A still writes; an INTERRUPT read on B cuts a
request running on A; a request whose node died ends with DONE NODE_LOST; two
RESUMEs racing on two nodes: exactly one wins. The same over real processes and
HAProxy: tests/test_cluster_processes.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from http_client import fetch

from tests.cluster_nodes import NEEDS_REDIS, Nodes
from tests.test_resume_sockets import (
    close_code,
    drop,
    is_done,
    is_stream,
    lorem_agents,
    read,
    read_until,
    resume_frame,
    seqs,
)
from trio_agent.cluster import mirror as mirror_module
from trio_agent.cluster import opening
from trio_agent.testing.processes import redis_server
from trio_agent.testing.wire import connect

pytestmark = NEEDS_REDIS


async def test_a_session_resumed_on_another_node_gets_every_frame_once(nodes: Nodes) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    words = 80
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=words, words_per_s=200)
        first = await read_until(c1, is_stream(9))
        await drop(c1, "reset")
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 9}))
        frames = await read_until(c2, is_done("r1"))
    resumed = frames[0]
    assert resumed["msg_type"] == "RESUMED"
    assert resumed["session_id"] == c1.session_id
    assert resumed["payload"]["requests"] == {"r1": "running"}
    assert all(f["session_id"] == c1.session_id for f in frames)
    assert seqs(first, "r1") + seqs(frames, "r1") == list(range(words))
    dones = [f for f in frames if f["msg_type"] == "DONE"]
    assert len(dones) == 1
    assert dones[0]["payload"]["status"] == "completed"
    assert dones[0]["payload"]["frames"] == words
    assert b.node.counts["resumes_remote_total"] == 1
    # A handed the session on: once its request ended, nothing of it is left there.
    with trio.fail_after(5):
        await a.server.wait_idle()


async def test_a_takeover_does_not_wait_for_the_old_owners_coalescing_tick(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old owner answers "flushed" at once, its unstored frames sent with it: with a
    coalescing tick of an hour, a resume elsewhere still takes no time (it would wait
    for FLUSH_WAIT_MAX_S, 10 s, if the answer waited for the tick), and the frames the
    old owner had written but not stored reach the client once, from the store."""
    monkeypatch.setattr(mirror_module, "COALESCE_S", 3600.0)
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    words = 30
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=words, words_per_s=1000)
        await read_until(c1, is_done("r1"))
        # The first round trip went at once; what A wrote after it waits for the tick.
        assert a.node.mirror.queued > 0
        await drop(c1, "reset")
    async with connect(b.server, "socket") as c2:
        with trio.fail_after(5):
            # As if frames 10 and on had been in flight when the connection dropped.
            await c2.send_raw(resume_frame(c1, last_seq={"r1": 9}))
            frames = await read_until(c2, is_done("r1"))
    assert frames[0]["msg_type"] == "RESUMED"
    assert seqs(frames, "r1") == list(range(10, words))
    dones = [f for f in frames if f["msg_type"] == "DONE"]
    assert len(dones) == 1
    assert dones[0]["payload"]["frames"] == words


async def test_a_new_request_after_a_resume_elsewhere_runs_on_the_new_node(nodes: Nodes) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=3, words_per_s=1000)
        await read_until(c1, is_done("r1"))
        await drop(c1, "fin")
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1))
        resumed = await read(c2)
        assert resumed["msg_type"] == "RESUMED"
        await c2.request("r2", agent="lorem", words=5, words_per_s=1000)
        frames = await read_until(c2, is_done("r2"))
        assert seqs(frames, "r2") == list(range(5))
        session = b.server.sessions[c1.session_id]
        assert session.registry.has_finished("r2")
        # Its frames are numbered under the new epoch: no msg_id repeats one of A's.
        assert all(f["msg_id"].startswith("2-s") for f in [resumed, *frames])


async def test_an_interrupt_read_on_b_cuts_a_request_running_on_a(nodes: Nodes) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=100_000, words_per_s=200)
        await read_until(c1, is_stream(2))
        await drop(c1, "reset")
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 2}))
        before = await read_until(c2, lambda f: f["msg_type"] == "STREAM" and f["seq"] >= 8)
        await c2.interrupt("r1", reason="barge-in")
        after = await read_until(c2, is_done("r1"))
    ack = next(f for f in after if f["msg_type"] == "INTERRUPT_ACK")
    assert ack["payload"]["interrupted"] == ["r1"]
    assert not [f for f in after[after.index(ack) :] if f["msg_type"] == "STREAM"]
    done = after[-1]
    assert done["payload"]["status"] == "interrupted"
    assert done["payload"]["interrupted"] is True
    received = seqs(before, "r1") + seqs(after, "r1")
    assert done["payload"]["frames"] == len(received) + 3
    assert received == list(range(3, 3 + len(received)))
    # A was told, and cut the request's scope: its session ends there.
    with trio.fail_after(5):
        await a.server.wait_idle()
    assert b.node.counts["interrupts_sent_total"] == 1
    assert a.node.counts["interrupts_received_total"] == 1


async def test_a_request_whose_node_died_ends_with_node_lost(nodes: Nodes) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=100_000, words_per_s=200)
        first = await read_until(c1, is_stream(5))
        # The client has seq 5; node A dies: what A stored is all the cluster has.
        await a.node.flush(2.0)
        a.stop()
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 5}))
        frames = await read_until(c2, is_done("r1"))
    done = frames[-1]
    assert done["payload"]["status"] == "failed"
    assert done["payload"]["error"]["code"] == "NODE_LOST"
    received = seqs(first, "r1") + seqs(frames, "r1")
    assert received == list(range(len(received)))
    assert done["payload"]["frames"] == len(received)
    assert b.node.counts["node_lost_claims_total"] == 1


async def test_two_resumes_racing_on_two_nodes_exactly_one_wins(nodes: Nodes) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await drop(c1, "reset")
    results: dict[str, str] = {}
    # Both connections are open before either RESUME goes, and both stay open until
    # both are answered: the winner's session must live while the loser's RESUME is
    # decided (a session that ended meanwhile is unknown, not a race lost).
    connected = trio.Semaphore(0)
    answered = trio.Event()

    async def resume_on(name: str, server: Any) -> None:
        async with connect(server, "socket") as c:
            connected.release()
            await ready.wait()
            await c.send_raw(resume_frame(c1))
            frame = await read(c)
            results[name] = frame["msg_type"] + ":" + frame.get("payload", {}).get("code", "")
            if len(results) == 2:
                answered.set()
            await answered.wait()

    ready = trio.Event()
    async with trio.open_nursery() as race:
        race.start_soon(resume_on, "a", a.server)
        race.start_soon(resume_on, "b", b.server)
        for _ in range(2):
            await connected.acquire()
        ready.set()
    assert sorted(results.values()) == ["ERROR:RESUME_DENIED", "RESUMED:"]


async def wait_for_problem(node: Any, present: bool) -> None:
    with trio.fail_after(10):
        while (node.problem is not None) != present:
            await node.problem_changed.wait()


async def test_redis_restarted_under_load_replies_go_on_and_resume_elsewhere_works_again(
    nursery: trio.Nursery,
) -> None:
    with redis_server() as redis:
        nodes = Nodes(nursery, redis.url)
        a = await nodes.start("a", lorem_agents())
        b = await nodes.start("b", lorem_agents())
        words = 400
        async with connect(a.server, "socket") as c1:
            await c1.request("r1", agent="lorem", words=words, words_per_s=400)
            first = await read_until(c1, is_stream(5))
            await trio.to_thread.run_sync(redis.kill)
            # The reply goes on while the store is gone; the node says it is degraded.
            first += await read_until(c1, is_stream(60))
            await wait_for_problem(a.node, True)
            ready = await fetch(a.server, "/readyz")
            assert ready.status == 200
            assert b"degraded: store unreachable" in ready.body
            await trio.to_thread.run_sync(redis.restart)
            await wait_for_problem(a.node, False)
            await a.node.flush(5.0)  # (what the node wrote anew is stored)
            last = seqs(first, "r1")[-1]
            await drop(c1, "reset")
        async with connect(b.server, "socket") as c2:
            await c2.send_raw(resume_frame(c1, last_seq={"r1": last}))
            frames = await read_until(c2, is_done("r1"))
    assert frames[0]["msg_type"] == "RESUMED"
    assert seqs(first, "r1") + seqs(frames, "r1") == list(range(words))
    assert frames[-1]["payload"]["frames"] == words
    assert a.node.counts["store_errors_total"] >= 1


async def test_a_node_declares_a_restarted_store_back_only_once_it_holds_its_lease_again(
    nursery: trio.Nursery,
) -> None:
    """A store restarted empty has lost the node's lease. If the node called it back
    when its mirror's first write went through, the sessions it writes anew would
    belong, for up to a third of a lease, to a node with no lease: a resume elsewhere
    then takes it for dead and ends its running requests with NODE_LOST. With a lease
    of 30 s the lease task would not look at the store for 10 s, so the mirror's write
    always comes first: the node must take its lease at once, before it says "back"."""
    with redis_server() as redis:
        nodes = Nodes(nursery, redis.url)
        a = await nodes.start("a", lorem_agents(), node_lease_s=30.0)
        async with connect(a.server, "socket") as c1:
            await c1.request("r1", agent="lorem", words=100_000, words_per_s=200)
            await read_until(c1, is_stream(2))
            await trio.to_thread.run_sync(redis.kill)
            await wait_for_problem(a.node, True)
            await trio.to_thread.run_sync(redis.restart)
            await wait_for_problem(a.node, False)
            assert await a.store.node_alive("a")
            await c1.interrupt("r1")
            await read_until(c1, is_done("r1"))


async def test_the_session_frame_waits_until_the_store_knows_the_session(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirror writes a new session's record asynchronously, and a client whose
    connection drops right after its SESSION frame may RESUME on another node at once:
    had the frame gone out first, that node would answer RESUME_UNKNOWN for a session
    that exists (a loaded node's mirror lags). With A's write of the record held back,
    no SESSION frame comes; once the record is stored it does, and B resumes it."""
    monkeypatch.setattr(opening, "OPEN_WAIT_MAX_S", 60.0)
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    order: list[str] = []
    release = trio.Event()
    store_open_session = a.store.open_session

    async def held_back(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        await store_open_session(*args, **kwargs)
        order.append("record stored")

    monkeypatch.setattr(a.store, "open_session", held_back)
    got_session = trio.Event()
    clients: list[Any] = []

    async def open_client() -> None:
        async with connect(a.server, "socket") as c1:
            order.append("SESSION frame")
            got_session.set()
            clients.append(c1)
            await drop(c1, "reset")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_client)
        # An event that must not happen: the frame waits for the record.
        with trio.move_on_after(0.5):
            await got_session.wait()
        release.set()
    assert order == ["record stored", "SESSION frame"]
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(clients[0]))
        assert (await read(c2))["msg_type"] == "RESUMED"


async def test_a_resume_on_the_same_node_is_local(nodes: Nodes) -> None:
    a = await nodes.start("a", lorem_agents())
    await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=30, words_per_s=300)
        first = await read_until(c1, is_stream(3))
        await drop(c1, "reset")
    async with connect(a.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 3}))
        frames = await read_until(c2, is_done("r1"))
    assert frames[0]["msg_type"] == "RESUMED"
    assert seqs(first, "r1") + seqs(frames, "r1") == list(range(30))
    assert a.node.counts["resumes_local_total"] == 1
    assert a.node.counts["resumes_remote_total"] == 0


async def test_a_zombie_connection_on_the_old_node_is_closed_with_4001(nodes: Nodes) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    # The client thinks its connection to A is dead (it is not) and resumes on B.
    async with connect(a.server, "socket") as zombie, connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(zombie))
        assert (await read(c2))["msg_type"] == "RESUMED"
        with trio.fail_after(5):
            assert await close_code(zombie) == 4001


class Remembering:
    """An agent that remembers, per session, every input it was given, and carries
    that memory to another node (``export_session_state``/``restore_session_state``)."""

    async def __call__(self, request: Any, stream: Any) -> None:
        said = request.session_state.setdefault(self, [])
        said.append(request.input)
        await stream.send(" | ".join(said))

    def export_session_state(self, session_state: dict[object, Any]) -> object:
        return session_state.get(self)

    def restore_session_state(self, session_state: dict[object, Any], data: object) -> None:
        session_state[self] = list(data) if isinstance(data, list) else []


async def test_what_an_agent_keeps_follows_the_session_to_another_node(nodes: Nodes) -> None:
    agent = Remembering()
    a = await nodes.start("a", {"memo": agent}, default_agent="memo")
    b = await nodes.start("b", {"memo": agent}, default_agent="memo")
    async with connect(a.server, "socket") as c1:
        await c1.send_raw(
            json.dumps(
                {
                    "msg_type": "REQUEST",
                    "msg_id": "m1",
                    "request_id": "r1",
                    "payload": {"input": "first"},
                }
            )
        )
        await read_until(c1, is_done("r1"))
        await a.node.flush(5.0)
        await drop(c1, "fin")
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1))
        assert (await read(c2))["msg_type"] == "RESUMED"
        await c2.send_raw(
            json.dumps(
                {
                    "msg_type": "REQUEST",
                    "msg_id": "m2",
                    "request_id": "r2",
                    "payload": {"input": "second"},
                }
            )
        )
        frames = await read_until(c2, is_done("r2"))
    stream = next(f for f in frames if f["msg_type"] == "STREAM")
    assert stream["payload"]["delta"] == "first | second"


async def test_a_node_that_missed_the_moved_message_follows_the_store(nodes: Nodes) -> None:
    """Pub/Sub is at most once: a node that was not subscribed when another took its
    session over learns it from the session's record, and lets the session go."""
    from trio_agent.server.resume_book import token_digest

    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await drop(c1, "reset")
    token = c1.session["payload"]["resume"]["token"]
    await a.node.flush(5.0)
    # B's take-over, as the store sees it, with no "moved" sent to A:
    taken = await b.store.take_over(
        c1.session_id,
        token_digest=token_digest(token),
        new_token_digest=token_digest("next"),
        node_id="b",
        max_denied=8,
    )
    assert taken.verdict.value == "ok"
    with trio.fail_after(5):  # (the resume window is 30 s)
        await a.server.wait_idle()
