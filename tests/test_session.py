"""Protocol v1 end to end: the seed scenarios and one test per guarantee.

Every conversation goes through the GuaranteeChecker in ``wire.py``, so besides
what each test asserts, guarantees 1-7 are checked on every frame. Tests marked
with the ``transport`` fixture run twice: over memory streams and over a real
loopback socket.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from testing_agents import Probe, endless, fails_after_two, refuses, stubborn
from trio_websocket import ConnectionClosed

from trio_agent import agents as builtin
from trio_agent.server.session import Session
from trio_agent.server.writer import Writer
from trio_agent.testing.wire import connect, only


@pytest.fixture(params=["memory", "socket"])
def transport(request) -> str:
    return request.param


def is_stream(rid):
    return lambda f: f["msg_type"] == "STREAM" and f["request_id"] == rid


def agent_set(probe=None, **extra):
    agents = {"lorem": builtin.lorem, "echo": builtin.echo, "endless": endless(probe)}
    agents.update(extra)
    return agents


# --------------------------------------------------------------------------- seed scenarios


async def test_normal_interrupt(start_server, transport):
    probe = Probe()
    server = await start_server(agent_set(probe))
    async with connect(server, transport) as c:
        await c.request("r1", agent="endless")
        await c.recv_until(is_stream("r1"))
        await c.recv_until(is_stream("r1"))
        ack_id = await c.interrupt("r1")
        frames = await c.until_ack(ack_id)
        ack = frames[-1]
        assert ack["payload"] == {
            "interrupted": ["r1"],
            "interrupted_count": 1,
            "reason": "USER_NEW_INPUT",
            "targets": {},
        }
        # Guarantee 5: after the ACK, the next frame about r1 is its DONE.
        done = await c.recv()
        assert done["msg_type"] == "DONE"
        assert done["request_id"] == "r1"
        assert done["payload"]["status"] == "interrupted"
        assert done["payload"]["interrupted"] is True
        assert done["payload"]["reason"] == "USER_NEW_INPUT"
        assert done["payload"]["cancelled_by"] == ack_id
        assert done["payload"]["frames"] == len(only(c.received, "STREAM", "r1"))
        with trio.fail_after(5):
            await probe.any_cancelled.wait()
        assert probe.cancelled == ["r1"]
        c.assert_guarantees()


async def test_interrupt_all(start_server, transport):
    server = await start_server(agent_set())
    async with connect(server, transport) as c:
        await c.request("r1", agent="endless")
        await c.request("r2", agent="endless")
        await c.recv_until(is_stream("r1"))
        await c.recv_until(is_stream("r2"))
        ack_id = await c.interrupt(reason="STOP_BUTTON")
        ack = (await c.until_ack(ack_id))[-1]
        assert sorted(ack["payload"]["interrupted"]) == ["r1", "r2"]
        assert ack["payload"]["interrupted_count"] == 2
        assert ack["payload"]["reason"] == "STOP_BUTTON"
        dones = [await c.recv(), await c.recv()]
        assert sorted(d["request_id"] for d in dones) == ["r1", "r2"]
        assert all(d["msg_type"] == "DONE" and d["payload"]["interrupted"] for d in dones)
        c.assert_guarantees()


async def test_interrupt_a_request_that_does_not_exist(start_server, transport):
    server = await start_server(agent_set())
    async with connect(server, transport) as c:
        ack_id = await c.interrupt("ghost")
        frames = await c.until_ack(ack_id)
        assert len(frames) == 1  # no ERROR before it: not an error
        assert frames[0]["payload"] == {
            "interrupted": [],
            "interrupted_count": 0,
            "reason": "USER_NEW_INPUT",
            "targets": {"ghost": "unknown"},
        }
        c.assert_guarantees()


async def test_new_request_right_after_interrupt_all_runs_untouched(start_server, transport):
    """Guarantee 7: the REQUEST sent right after an interrupt-all (before its ACK is
    even read) is not cut and completes."""
    server = await start_server(agent_set())
    async with connect(server, transport) as c:
        await c.request("old", agent="endless")
        await c.recv_until(is_stream("old"))
        ack_id = await c.interrupt()
        await c.request("new", agent="lorem", words=7, words_per_s=0)
        frames = await c.until_done("new")
        frames += (
            await c.recv_until(lambda f: f["msg_type"] == "DONE" and f["request_id"] == "old")
            if not only(frames, "DONE", "old")
            else []
        )
        ack = only(c.received, "INTERRUPT_ACK")[0]
        assert ack["ref"] == ack_id
        assert ack["payload"]["interrupted"] == ["old"]
        new_done = only(c.received, "DONE", "new")[0]
        assert new_done["payload"] == {"status": "completed", "interrupted": False, "frames": 7}
        assert "".join(f["payload"]["delta"] for f in only(c.received, "STREAM", "new")) == "".join(
            builtin.lorem_words(7)
        )
        c.assert_guarantees()


async def test_concurrent_interrupts_one_wins(start_server, transport):
    """Guarantees 3 and 6: three INTERRUPTs for one request, sent back to back:
    three ACKs, and the request is named by exactly one of them."""
    server = await start_server(agent_set())
    async with connect(server, transport) as c:
        await c.request("r1", agent="endless")
        await c.recv_until(is_stream("r1"))
        ids = [await c.interrupt("r1"), await c.interrupt(), await c.interrupt("r1")]
        await c.until_ack(ids[-1])
        await c.until_done("r1") if not only(c.received, "DONE", "r1") else None
        acks = {a["ref"]: a["payload"] for a in only(c.received, "INTERRUPT_ACK")}
        assert set(acks) == set(ids)
        assert [acks[i]["interrupted_count"] for i in ids] == [1, 0, 0]
        assert acks[ids[2]]["targets"] == {"r1": "already_done"}
        assert len(only(c.received, "DONE", "r1")) == 1
        c.assert_guarantees()


# --------------------------------------------------------------------------- guarantees


async def test_g1_exactly_one_done_when_interrupt_races_completion(start_server, autojump_clock):
    """An INTERRUPT that arrives after the request decided to complete reports
    already_done, and the request still ends with exactly one DONE (completed)."""
    server = await start_server(agent_set())
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="lorem", words=3, words_per_s=0)
        await trio.testing.wait_all_tasks_blocked()
        # The agent has finished; its frames and DONE wait for the client to read.
        ack_id = await c.interrupt("r1")
        frames = await c.until_ack(ack_id)
        frames += await c.until_done("r1") if not only(frames, "DONE") else []
        ack = only(c.received, "INTERRUPT_ACK")[0]
        assert ack["payload"]["interrupted_count"] == 0
        assert ack["payload"]["targets"] == {"r1": "already_done"}
        done = only(c.received, "DONE", "r1")
        assert len(done) == 1
        assert done[0]["payload"]["status"] == "completed"
        assert done[0]["payload"]["frames"] == 3
        c.assert_guarantees()


async def test_g2_frames_counts_what_was_delivered_when_queued_frames_are_dropped(
    start_server, autojump_clock
):
    """The stream lane is full when the INTERRUPT is read: queued frames are dropped,
    and DONE.frames is exactly what the client received (seq contiguous from 0)."""
    server = await start_server(agent_set(), stream_lane_capacity=8, write_batch_frames=1)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="lorem", words=1000, words_per_s=0)
        await c.recv_until(is_stream("r1"))
        await trio.testing.wait_all_tasks_blocked()
        session = server.sessions[c.session_id]
        assert session.lanes.stream_depth == 8  # full: the agent waits on backpressure
        ack_id = await c.interrupt("r1")
        await c.until_ack(ack_id)
        done = await c.recv()
        received = only(c.received, "STREAM", "r1")
        assert done["payload"]["frames"] == len(received) < 8
        assert [f["payload"]["seq"] for f in received] == list(range(len(received)))
        c.assert_guarantees()


async def test_g3_every_interrupt_gets_exactly_one_ack(start_server, transport):
    server = await start_server(agent_set())
    async with connect(server, transport) as c:
        await c.request("a", agent="endless")
        await c.recv_until(is_stream("a"))
        ids = [
            await c.interrupt("nope"),
            await c.interrupt("a"),
            await c.interrupt("a"),
            await c.interrupt(),
            await c.interrupt("bad id with spaces"),  # invalid: an ERROR, not an ACK
        ]
        await c.recv_until(lambda f: f["msg_type"] == "ERROR")
        acks = only(c.received, "INTERRUPT_ACK")
        assert sorted(a["ref"] for a in acks) == sorted(ids[:4])
        error = only(c.received, "ERROR")[0]
        assert error["ref"] == ids[4]
        assert error["payload"]["code"] == "INVALID_MESSAGE"
        c.assert_guarantees()


async def test_g4_ack_overtakes_queued_stream_frames(start_server, autojump_clock):
    """Request A fills the stream lane; an INTERRUPT of B is read; its ACK is written
    before A's queued frames. At most three A frames arrive first: the one the
    writer is sending, and two that trio-websocket's client reader holds (its
    one-message queue and the message it is putting there); 16 were queued. (With
    write batches, the frames of the batch being written come first too.)"""
    server = await start_server(agent_set(), stream_lane_capacity=16, write_batch_frames=1)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("b", agent="endless")
        await c.recv_until(is_stream("b"))
        await c.request("a", agent="lorem", words=1000, words_per_s=0)
        await c.recv_until(is_stream("a"))
        await trio.testing.wait_all_tasks_blocked()
        assert server.sessions[c.session_id].lanes.stream_depth == 16
        ack_id = await c.interrupt("b")
        before_ack = await c.until_ack(ack_id)
        assert len(only(before_ack, "STREAM", "a")) <= 3
        # A's queued frames were kept, and follow.
        after = await c.recv_until(lambda f: len(only(c.received, "STREAM", "a")) >= 20)
        assert only(after, "DONE", "b")
        await c.interrupt("a")
        await c.until_done("a")
        c.assert_guarantees()


async def test_g5_nothing_of_a_cut_request_but_its_done_after_the_ack(start_server, autojump_clock):
    server = await start_server(agent_set(), stream_lane_capacity=16)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="lorem", words=1000, words_per_s=0)
        await c.recv_until(is_stream("r1"))
        await trio.testing.wait_all_tasks_blocked()
        ack_id = await c.interrupt("r1")
        await c.until_ack(ack_id)
        rest = [await c.recv()]
        await c.heartbeat()
        rest += await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")
        assert [f["msg_type"] for f in rest] == ["DONE", "HEARTBEAT"]
        c.assert_guarantees()


async def test_g8_sessions_are_isolated(start_server, transport):
    server = await start_server(agent_set())
    async with connect(server, transport) as alice, connect(server, transport) as bob:
        await alice.request("shared-id", agent="endless")
        await alice.recv_until(is_stream("shared-id"))
        # Bob uses the same request id: a different request in a different session.
        await bob.request("shared-id", agent="lorem", words=2, words_per_s=0)
        await bob.until_done("shared-id")
        # Bob's interrupts cannot reach Alice's request.
        ack = (await bob.until_ack(await bob.interrupt("shared-id")))[-1]
        assert ack["payload"]["interrupted_count"] == 0
        ack = (await bob.until_ack(await bob.interrupt()))[-1]
        assert ack["payload"]["interrupted_count"] == 0
        # Nor can Bob address Alice's session by its id.
        await bob.send({"msg_type": "INTERRUPT", "msg_id": "x", "session_id": alice.session_id})
        error = (await bob.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
        assert error["payload"]["code"] == "INVALID_MESSAGE"
        # Alice never saw any of it, and her request still streams.
        count = len(only(alice.received, "STREAM"))
        await alice.recv_until(lambda f: len(only(alice.received, "STREAM")) > count + 2)
        assert {f["msg_type"] for f in alice.received} == {"SESSION", "STREAM"}
        assert server.sessions[alice.session_id].registry.running_count == 1
        await alice.interrupt()
        await alice.until_done("shared-id")
        alice.checker.sent({"msg_type": "INTERRUPT", "msg_id": "x"})  # bob's, for bookkeeping
        bob.assert_guarantees()


@pytest.mark.parametrize(
    "when",
    ["before-session-read", "mid-stream", "writer-blocked", "after-interrupt", "clean-close"],
)
async def test_g9_disconnect_in_any_state_cancels_everything(start_server, transport, when):
    probe = Probe()
    # A connection lost without a close frame may be resumed (v1.2) for the
    # resume window; with resumption off its session ends at once, as tested here
    # (tests/test_resume_sockets.py tests the window's end).
    window = {} if when == "clean-close" else {"resume_window_s": 0}
    server = await start_server(agent_set(probe), **window)
    idle_tasks = server.stats()["tasks"]
    lockstep = when == "writer-blocked" and transport == "memory"
    async with connect(server, transport, lockstep=lockstep) as c:
        if when != "before-session-read":
            await c.request("r1", agent="endless")
            await c.request("r2", agent="lorem", words=100_000, words_per_s=0)
            await c.recv_until(is_stream("r1"))
            if when == "after-interrupt":
                await c.interrupt("r1")
        if when == "clean-close":
            await c.ws.aclose()
        else:
            await trio.aclose_forcefully(c.stream)
    with trio.fail_after(5):
        await server.wait_idle()
    await trio.testing.wait_all_tasks_blocked()  # let the connection task return
    if when != "before-session-read":
        assert "r1" in probe.finished
    stats = server.stats()
    assert stats["sessions"] == 0
    assert stats["requests_running"] == 0
    assert stats["tasks"] == idle_tasks  # no task of the session survives
    # and the server still serves
    async with connect(server, transport) as c2:
        await c2.request("again", agent="lorem", words=3, words_per_s=0)
        assert (await c2.until_done("again"))[-1]["payload"]["status"] == "completed"


async def test_g10_agent_ignoring_cancellation_cannot_wedge_the_session(
    start_server, autojump_clock
):
    probe = Probe()
    server = await start_server(agent_set(stubborn=stubborn(30.0, probe)), cleanup_grace_s=2.0)
    async with connect(server, "memory") as c:
        await c.request("slow", agent="stubborn")
        await c.recv_until(is_stream("slow"))
        t0 = trio.current_time()
        ack_id = await c.interrupt("slow")
        await c.until_ack(ack_id)
        done = await c.recv()
        assert done["msg_type"] == "DONE"
        assert done["payload"]["interrupted"] is True
        assert trio.current_time() - t0 < 0.1  # ACK and DONE did not wait for the agent
        # The session keeps serving while the agent sulks.
        await c.heartbeat()
        await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")
        await c.request("next", agent="lorem", words=4, words_per_s=0)
        assert (await c.until_done("next"))[-1]["payload"]["frames"] == 4
        c.assert_guarantees()
    with trio.fail_after(60):
        await server.wait_idle()
    # Its late send was refused: nothing of it reached the wire.
    assert probe.cancelled == ["slow"]


# --------------------------------------------------------------------------- endings


async def test_timeout_ends_with_status_timeout(start_server, autojump_clock):
    server = await start_server(agent_set())
    async with connect(server, "memory") as c:
        await c.request("r1", agent="lorem", words=100, words_per_s=10, timeout_s=0.55)
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "timeout"
        assert done["interrupted"] is False
        assert done["frames"] == 6  # words at t=0, 0.1, ..., 0.5
        assert "timeout_s=0.55" in done["reason"]
        c.assert_guarantees()


async def test_timeout_is_capped_by_the_server(start_server, autojump_clock):
    server = await start_server(agent_set(), request_timeout_cap_s=0.35)
    async with connect(server, "memory") as c:
        assert c.session["payload"]["limits"]["request_timeout_cap_s"] == 0.35
        await c.request("r1", agent="lorem", words=100, words_per_s=10, timeout_s=100)
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "timeout"
        assert done["frames"] == 4


async def test_agent_failure_ends_the_request_not_the_session(start_server, transport):
    server = await start_server(agent_set(fails=fails_after_two, refuses=refuses))
    async with connect(server, transport) as c:
        await c.request("r1", agent="fails")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done == {
            "status": "failed",
            "interrupted": False,
            "frames": 2,
            "reason": "ValueError: boom",
            "error": {"code": "AGENT_ERROR", "message": "ValueError: boom"},
        }
        await c.request("r2", agent="refuses")
        done = (await c.until_done("r2"))[-1]["payload"]
        assert done["error"] == {"code": "UPSTREAM_ERROR", "message": "the upstream said no"}
        await c.request("r3", agent="echo", input="still here")
        assert (await c.until_done("r3"))[-1]["payload"]["status"] == "completed"
        c.assert_guarantees()


async def test_bad_agent_options_fail_the_request_with_a_message(start_server):
    server = await start_server(agent_set())
    async with connect(server) as c:
        await c.request("r1", agent="lorem", words="many")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "failed"
        assert "options.words" in done["error"]["message"]


async def test_shutdown_ends_requests_with_shutdown_and_closes_1001(start_server, transport):
    server = await start_server(agent_set())
    async with connect(server, transport) as c:
        await c.request("r1", agent="endless")
        await c.request("r2", agent="endless")
        await c.recv_until(is_stream("r2"))
        server.shutdown()
        assert await c.until_closed() == 1001
        dones = only(c.received, "DONE")
        assert sorted(d["request_id"] for d in dones) == ["r1", "r2"]
        assert all(
            d["payload"]["status"] == "shutdown" and not d["payload"]["interrupted"] for d in dones
        )
        c.assert_guarantees()
    with trio.fail_after(5):
        await server.wait_idle()


async def test_idle_session_is_closed_with_1001(start_server, autojump_clock):
    server = await start_server(agent_set(), idle_timeout_s=30)
    async with connect(server, "memory") as c:
        t0 = trio.current_time()
        with pytest.raises(ConnectionClosed) as closed:
            await c.recv()
        assert closed.value.reason.code == 1001
        assert 30 <= trio.current_time() - t0 < 31


async def test_heartbeat_is_answered_with_ref(start_server, transport):
    server = await start_server(agent_set())
    async with connect(server, transport) as c:
        msg_id = await c.heartbeat()
        reply = (await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT"))[-1]
        assert reply["ref"] == msg_id
        assert reply["session_id"] == c.session_id


async def test_session_frame_describes_the_server(start_server):
    server = await start_server(agent_set(), max_concurrent_requests=3, max_input_bytes=1000)
    async with connect(server) as c:
        payload = c.session["payload"]
        assert payload["protocol"] == "1.2"
        assert payload["server"].startswith("trio-agent/")
        assert set(payload["agents"]) == {"lorem", "echo", "endless"}
        assert payload["agents"]["lorem"]["available"] is True
        assert payload["agents"]["lorem"]["description"].startswith("Deterministic")
        assert payload["default_agent"] == "lorem"
        assert payload["limits"]["max_concurrent_requests"] == 3
        assert payload["limits"]["max_input_bytes"] == 1000


# --------------------------------------------------------------------------- every ERROR code


async def expect_error(
    c, code: str, raw: str | bytes | None = None, frame: dict | None = None
) -> dict:
    if raw is not None:
        await c.send_raw(raw)
    else:
        await c.send(frame)
    error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
    assert error["payload"]["code"] == code, error
    assert error["payload"]["message"]
    return error


async def test_every_error_code_and_the_session_survives_them(start_server, transport):
    server = await start_server(agent_set(), max_concurrent_requests=1, max_input_bytes=10)
    async with connect(server, transport) as c:
        await expect_error(c, "INVALID_JSON", raw="{nope")
        await expect_error(c, "INVALID_MESSAGE", raw="[1, 2]")
        await expect_error(c, "INVALID_MESSAGE", raw=b"\x00binary")
        e = await expect_error(
            c, "INVALID_MESSAGE", raw='{"msg_type": "REQUEST", "msg_id": "m1", "payload": {}}'
        )
        assert e["ref"] == "m1"
        e = await expect_error(
            c, "UNKNOWN_MSG_TYPE", raw='{"msg_type": "STREAM", "msg_id": "m2", "request_id": "q"}'
        )
        assert (e["ref"], e["request_id"]) == ("m2", "q")
        big = {
            "msg_type": "REQUEST",
            "msg_id": "m3",
            "request_id": "big",
            "payload": {"input": "ééééééé"},
        }
        e = await expect_error(c, "MESSAGE_TOO_LARGE", raw=json.dumps(big))
        assert (e["ref"], e["request_id"]) == ("m3", "big")
        e = await expect_error(
            c,
            "UNKNOWN_AGENT",
            raw=json.dumps({**big, "request_id": "u", "payload": {"input": "x", "agent": "nope"}}),
        )
        assert e["request_id"] == "u"
        await c.request("run", agent="endless")
        await c.recv_until(is_stream("run"))
        e = await expect_error(
            c, "DUPLICATE_REQUEST_ID", frame={**big, "request_id": "run", "payload": {"input": "x"}}
        )
        assert e["request_id"] == "run"
        await expect_error(
            c,
            "TOO_MANY_REQUESTS",
            raw=json.dumps({**big, "request_id": "two", "payload": {"input": "x"}}),
        )
        await c.interrupt("run")
        await c.until_done("run")
        # After its DONE the id may be used again.
        await c.request("run", agent="lorem", words=2, words_per_s=0)
        assert (await c.until_done("run"))[-1]["payload"]["status"] == "completed"
        c.checker.received({"msg_type": "ERROR", "request_id": "big"})
        c.checker.received({"msg_type": "ERROR", "request_id": "u"})
        c.checker.received({"msg_type": "ERROR", "request_id": "two"})


async def test_internal_error_gets_an_error_frame_and_the_session_lives(start_server, monkeypatch):
    server = await start_server(agent_set())

    def broken(self, message):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Session, "_start_request", broken)
    async with connect(server) as c:
        await expect_error(
            c,
            "INTERNAL_ERROR",
            raw=json.dumps({"msg_type": "REQUEST", "request_id": "x", "payload": {"input": ""}}),
        )
        await c.heartbeat()
        await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")


async def test_oversized_websocket_message_closes_with_1009(start_server, transport):
    server = await start_server(agent_set(), max_message_bytes=200)
    async with connect(server, transport) as c:
        await c.send_raw(json.dumps({"msg_type": "HEARTBEAT", "msg_id": "x" * 300}))
        with pytest.raises(ConnectionClosed) as closed:
            await c.recv()
        assert closed.value.reason.code == 1009


async def test_one_broken_session_does_not_reach_another(start_server, monkeypatch, transport):
    server = await start_server(agent_set())
    real_render = Writer._render_done

    def render_done(self, frame):
        if frame.record.request_id == "poison":
            raise RuntimeError("a bug in one session")
        return real_render(self, frame)

    monkeypatch.setattr(Writer, "_render_done", render_done)
    async with connect(server, transport) as healthy, connect(server, transport) as doomed:
        await healthy.request("h", agent="endless")
        await healthy.recv_until(is_stream("h"))
        await doomed.request("poison", agent="lorem", words=1, words_per_s=0)
        assert await doomed.until_closed() == 1011
        count = len(only(healthy.received, "STREAM"))
        await healthy.recv_until(lambda f: len(only(healthy.received, "STREAM")) > count + 2)
        await healthy.interrupt()
        await healthy.until_done("h")
        healthy.assert_guarantees()


async def test_wrong_path_is_refused_with_404(start_server):
    from trio_websocket import HandshakeError, open_websocket_url

    server = await start_server(agent_set())
    with pytest.raises(HandshakeError) as info:
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/elsewhere"):
            pass  # pragma: no cover
    assert info.value.status_code == 404


async def test_request_interrupted_before_its_task_ran_never_starts_its_agent(
    start_server, autojump_clock
):
    probe = Probe()
    server = await start_server(agent_set(probe))
    async with connect(server) as c:
        session = server.sessions[c.session_id]
        # Feed both frames to the session in one go, so the INTERRUPT is handled
        # before the request task gets its first turn.
        session._handle_frame(
            json.dumps(
                {
                    "msg_type": "REQUEST",
                    "msg_id": "q",
                    "request_id": "early",
                    "payload": {"input": "", "agent": "endless"},
                }
            )
        )
        session._handle_frame(
            json.dumps({"msg_type": "INTERRUPT", "msg_id": "i", "request_id": "early"})
        )
        c.checker.sent({"msg_type": "REQUEST", "request_id": "early"})
        c.checker.sent({"msg_type": "INTERRUPT", "msg_id": "i", "request_id": "early"})
        await c.until_ack("i")
        done = (await c.until_done("early"))[-1]["payload"]
        assert done["frames"] == 0
        assert done["interrupted"] is True
        await trio.testing.wait_all_tasks_blocked()
        assert probe.started == []
        c.assert_guarantees()


async def test_shutdown_flush_does_not_wait_for_a_dead_connection(start_server, autojump_clock):
    """The shutdown flush is bounded by the grace period, and ends at once when the
    writer is gone: queued frames that can never be written do not hold it."""
    server = await start_server(agent_set(), shutdown_grace_s=30)
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="lorem", words=1000, words_per_s=0)
        await c.recv_until(is_stream("r1"))
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        server.shutdown()
        await trio.aclose_forcefully(c.stream)  # the client vanishes with frames queued
        with trio.fail_after(60):
            await server.wait_idle()
        assert trio.current_time() - t0 < 2
