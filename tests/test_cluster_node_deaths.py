"""A node that dies at the worst moment, with two nodes in one process on a real
redis-server (``tests/cluster_nodes.py``): still exactly one DONE per request, and
a client whose token a dead node spent can still resume (``docs/cluster.md``,
"A node dies")."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.cluster_nodes import NEEDS_REDIS, Nodes
from tests.test_resume_sockets import (
    drop,
    is_done,
    is_stream,
    lorem_agents,
    read,
    read_until,
    resume_frame,
    seqs,
)
from trio_agent.server.resume_book import MAX_DENIED_PER_SESSION, token_digest
from trio_agent.testing.wire import connect

pytestmark = NEEDS_REDIS


async def never_written(*args: Any, **kwargs: Any) -> None:
    """A store write that never completes: the mirror's lag, at its longest."""
    await trio.sleep_forever()


async def test_a_done_the_dead_node_sent_but_did_not_store_is_not_sent_again(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=100, words_per_s=200)
        await read_until(c1, is_stream(2))
        await a.node.flush(2.0)  # the request's start and first frames are stored...
        monkeypatch.setattr(a.store, "write", never_written)  # ...the rest never is
        assert await a.store.running_requests(c1.session_id) == {"r1": "a"}
        first = await read_until(c1, is_done("r1"))
        assert first[-1]["payload"]["status"] == "completed"
        a.stop()  # its lease goes with it: dead at once for B
    async with connect(b.server, "socket") as c2:
        # The client holds r1's DONE: it names no request (it expects no frame).
        await c2.send_raw(resume_frame(c1, last_seq={}))
        resumed = await read(c2)
        await c2.request("r2", agent="lorem", words=3, words_per_s=1000)
        frames = await read_until(c2, is_done("r2"))
    assert resumed["msg_type"] == "RESUMED"
    assert resumed["payload"]["requests"] == {}
    # Before the fix: r1 was relayed and ended a second time, DONE{NODE_LOST}.
    assert [f for f in frames if f.get("request_id") == "r1"] == []
    assert seqs(frames, "r2") == [0, 1, 2]
    # B claimed r1 for the store: no other node will end it (or wait for it) again.
    assert b.node.counts["node_lost_claims_total"] == 1
    await b.node.flush(2.0)
    assert await b.store.running_requests(c1.session_id) == {}


async def test_a_token_spent_by_a_node_killed_before_its_resumed_resumes_elsewhere(
    nodes: Nodes,
) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    c = await nodes.start("c", lorem_agents())
    words = 60
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=words, words_per_s=200)
        first = await read_until(c1, is_stream(4))
        await drop(c1, "reset")
    token = c1.session["payload"]["resume"]["token"]
    # The client's RESUME reached B, which spent the token in the store, and B was
    # killed before its RESUMED (with the next token) reached the client.
    taken = await b.store.take_over(
        c1.session_id,
        token_digest=token_digest(token),
        new_token_digest=token_digest("never-seen-by-the-client"),
        node_id="b",
        max_denied=MAX_DENIED_PER_SESSION,
    )
    assert taken.verdict.value == "ok"
    b.stop()
    async with connect(c.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 4}))
        frames = await read_until(c2, lambda f: f["msg_type"] == "ERROR" or is_done("r1")(f))
    resumed = frames[0]
    assert resumed["msg_type"] == "RESUMED", resumed
    # (Whether r1 ended on A meanwhile depends on how soon C saw B's lease gone.)
    assert list(resumed["payload"]["requests"]) == ["r1"]
    assert seqs(first, "r1") + seqs(frames, "r1") == list(range(words))
    assert [f["payload"]["status"] for f in frames if f["msg_type"] == "DONE"] == ["completed"]


async def test_a_token_spent_by_a_live_node_is_denied_after_its_lease_would_have_gone(
    nodes: Nodes,
) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await drop(c1, "reset")
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1))
        assert (await read(c2))["msg_type"] == "RESUMED"
        # B lives and serves the session: the spent token stays spent.
        async with connect(a.server, "socket") as c3:
            with trio.fail_after(5):
                await c3.send_raw(resume_frame(c1))
                refused = await read(c3)
    assert refused["msg_type"] == "ERROR"
    assert refused["payload"]["code"] == "RESUME_DENIED"


async def test_a_request_the_dead_node_never_stored_ends_node_lost_with_the_clients_count(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await a.node.flush(2.0)  # the session is in the store...
        monkeypatch.setattr(a.store, "write", never_written)  # ...nothing of r1 will be
        await c1.request("r1", agent="lorem", words=100_000, words_per_s=200)
        first = await read_until(c1, is_stream(6))
        assert await a.store.running_requests(c1.session_id) == {}
        a.stop()
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 6}))
        frames = await read_until(c2, is_done("r1"))
    assert frames[0]["payload"]["requests"] == {"r1": "running"}
    done = frames[-1]["payload"]
    # Before: DONE{RESUME_GAP, frames: 0}, though the client held 7 frames.
    assert (done["status"], done["error"]["code"]) == ("failed", "NODE_LOST")
    assert done["frames"] == len(seqs(first, "r1")) == 7
    assert seqs(frames, "r1") == []
    assert b.node.counts["node_lost_claims_total"] == 1


async def test_a_request_the_resume_leaves_out_is_not_relayed_from_a_live_node(
    nodes: Nodes,
) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=100_000, words_per_s=200)
        await read_until(c1, is_stream(2))
        await drop(c1, "reset")
    async with connect(b.server, "socket") as c2:
        # A client that leaves r1 out holds its DONE (A may have written it and not
        # confirmed it stored, when stalled): nothing of r1 may come again.
        await c2.send_raw(resume_frame(c1, last_seq={}))
        resumed = await read(c2)
        await c2.request("r2", agent="lorem", words=20, words_per_s=400)
        frames = await read_until(c2, is_done("r2"))
    assert resumed["payload"]["requests"] == {}
    assert [f for f in frames if f.get("request_id") == "r1"] == []
    assert seqs(frames, "r2") == list(range(20))
    assert b.node.counts["node_lost_claims_total"] == 0  # A lives: nothing to claim


async def test_a_claimer_killed_before_it_stored_its_done_is_claimed_from_by_the_next(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    c = await nodes.start("c", lorem_agents())
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=100_000, words_per_s=200)
        first = await read_until(c1, is_stream(2))
        await drop(c1, "reset")
    async with connect(b.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 2}))
        resumed = await read(c2)
        assert resumed["payload"]["requests"] == {"r1": "running"}
        relayed = await read_until(c2, is_stream(5))
        await b.node.flush(2.0)
        monkeypatch.setattr(b.store, "write", never_written)  # B's DONE is never stored
        a.stop()  # B claims r1 from dead A and ends it...
        relayed += await read_until(c2, is_done("r1"))
        assert b.node.counts["node_lost_claims_total"] == 1
        b.stop()  # ...and is killed before its DONE reached the store (or this client).
    assert await c.store.running_requests(c1.session_id) == {"r1": "a"}
    held = relayed[:-1]  # the client lost the connection before B's DONE came
    last_seq = max(seqs(held, "r1"))
    async with connect(c.server, "socket") as c3:
        await c3.send_raw(
            resume_frame(c1, token=resumed["payload"]["resume"]["token"], last_seq={"r1": last_seq})
        )
        # Before the claim named its claimer: C lost the claim to dead B and waited for
        # a DONE that never came (until the session's window ended).
        with trio.fail_after(10):
            frames = await read_until(c3, is_done("r1"))
    assert frames[0]["msg_type"] == "RESUMED"
    assert frames[0]["payload"]["requests"] == {"r1": "running"}
    done = frames[-1]["payload"]
    assert (done["status"], done["error"]["code"]) == ("failed", "NODE_LOST")
    received = seqs(first, "r1") + seqs(held, "r1") + seqs(frames, "r1")
    assert received == list(range(done["frames"]))
    assert [f for f in frames if f["msg_type"] == "DONE"] == [frames[-1]]
    assert c.node.counts["node_lost_claims_total"] == 1
    await c.node.flush(2.0)
    assert await c.store.running_requests(c1.session_id) == {}


async def test_a_relay_that_lost_the_claim_to_a_live_node_wins_it_once_that_one_dies(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await nodes.start("a", lorem_agents())
    b = await nodes.start("b", lorem_agents())
    c = await nodes.start("c", lorem_agents())
    claims: list[bool] = []
    lost_once = trio.Event()
    claim_request = c.store.claim_request

    async def recorded_claim(*args: Any, **kwargs: Any) -> bool:
        won = await claim_request(*args, **kwargs)
        claims.append(won)
        if not won:
            lost_once.set()
        return won

    monkeypatch.setattr(c.store, "claim_request", recorded_claim)
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=100_000, words_per_s=200)
        first = await read_until(c1, is_stream(2))
        await drop(c1, "reset")
    async with connect(c.server, "socket") as c2:
        await c2.send_raw(resume_frame(c1, last_seq={"r1": 2}))
        relayed = await read_until(c2, is_stream(5))
        # B, alive, claimed r1 from A (as a resume on B would, once A is dead) and has
        # not stored its DONE yet: C's relay loses the claim while B lives...
        assert await b.store.claim_request(c1.session_id, "r1", dead_node="a", claimer="b")
        a.stop()
        with trio.fail_after(10):
            await lost_once.wait()
        assert claims == [False]
        # ...and wins it once B dies without storing that DONE.
        b.stop()
        with trio.fail_after(10):
            relayed += await read_until(c2, is_done("r1"))
    done = relayed[-1]["payload"]
    assert (done["status"], done["error"]["code"]) == ("failed", "NODE_LOST")
    assert seqs(first, "r1") + seqs(relayed, "r1") == list(range(done["frames"]))
    assert claims[0] is False  # lost to live B, then won once: the last claim
    assert claims.index(True) == len(claims) - 1
    assert c.node.counts["node_lost_claims_total"] == 1
