"""A node that writes its sessions anew once the store answers again (``resync.py``)
never overwrites a session another node took over meanwhile, on a real redis-server
(``docs/cluster.md``, "Redis trouble")."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster_nodes import NEEDS_REDIS, Nodes
from tests.test_cluster_nodes import wait_for_problem
from tests.test_resume_sockets import is_done, read_until
from trio_agent import agents as builtin
from trio_agent.cluster.store import FrameWrite, RequestStarted, StoredSort, StoreUnavailable
from trio_agent.server.resume_book import MAX_DENIED_PER_SESSION, token_digest
from trio_agent.testing.wire import connect

pytestmark = NEEDS_REDIS


async def unreachable(*args: Any, **kwargs: Any) -> None:
    raise StoreUnavailable("connection refused")


async def test_a_node_back_from_store_trouble_does_not_rewrite_a_session_taken_over_meanwhile(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await nodes.start("a", {"lorem": builtin.lorem})
    b = await nodes.start("b", {"lorem": builtin.lorem})
    async with connect(a.server, "socket") as c1:
        await c1.request("r1", agent="lorem", words=5, words_per_s=1000)
        await read_until(c1, is_done("r1"))
        await a.node.flush(2.0)
        session_id = c1.session_id
        # A cannot reach the store (its lease refresh fails)...
        monkeypatch.setattr(a.store, "hold_lease", unreachable)
        await wait_for_problem(a.node, True)
        # ...while B takes the session over (the client's RESUME reached B; B's "moved"
        # never reached A) and stores a frame of its own.
        taken = await b.store.take_over(
            session_id,
            token_digest=token_digest(c1.session["payload"]["resume"]["token"]),
            new_token_digest=token_digest("the-next-token"),
            node_id="b",
            max_denied=MAX_DENIED_PER_SESSION,
        )
        assert (taken.verdict.value, taken.epoch) == ("ok", 2)
        await b.store.write(
            [
                RequestStarted(session_id, "r2", "b"),
                FrameWrite(session_id, "r2", StoredSort.STREAM, 0, '{"seq": 0}', "b"),
            ],
            max_bytes=1_000_000,
            ttl_s=60,
        )
        # The store answers A again: A writes the sessions it holds anew, this one too
        # (its connection is still open here, nothing told A the session moved).
        monkeypatch.undo()
        await wait_for_problem(a.node, False)
        await a.node.flush(5.0)
        assert a.server.sessions[session_id].moved_to is None
        # Before the rewrite checked the owner: ("a", 1), B's frames deleted, and the
        # digest of the token the client had spent on B put back.
        assert await b.store.session_owner(session_id) == ("b", 2)
        assert [(f.request_id, f.node_id) for f in await b.store.read_frames(session_id)][-1] == (
            "r2",
            "b",
        )
        assert await b.store.running_requests(session_id) == {"r2": "b"}
        again = await b.store.take_over(
            session_id,
            token_digest=token_digest("the-next-token"),
            new_token_digest=token_digest("one-more"),
            node_id="b",
            max_denied=MAX_DENIED_PER_SESSION,
        )
        assert again.verdict.value == "ok"  # B's token is still the session's
