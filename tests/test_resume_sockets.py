"""Resuming a session over real sockets (protocol v1.2): the server's side.

A client drops its connection mid-reply, connects anew and sends RESUME; the
reply goes on with every frame once, in order, and exactly one DONE. The other
tests cover what can go wrong: a window that has passed, a wrong or spent token,
two connections racing, a zombie connection, frames evicted from the replay
buffer, a detached session held by backpressure, an INTERRUPT right after a
resume, a spoken reply's two sequences.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from tests.testing_agents import Probe, endless
from trio_agent import agents as builtin
from trio_agent.protocol import CloseCode
from trio_agent.testing.wire import AudioFrame, WireClient, connect

Frame = dict[str, Any]


async def read(c: WireClient) -> Frame:
    """The next frame (an AUDIO frame as its header's fields), without the per-connection
    guarantee checks (a resumed connection starts mid-sequence)."""
    message = await c.wire.receive_message()
    if isinstance(message, AudioFrame):
        return {**message.header.model_dump(), "msg_type": "AUDIO"}
    if message.get("msg_type") == "STREAM":
        return {**message, "seq": message["payload"]["seq"]}
    return message


async def read_until(c: WireClient, done: Any) -> list[Frame]:
    frames = []
    while True:
        frame = await read(c)
        frames.append(frame)
        if done(frame):
            return frames


async def close_code(c: WireClient) -> int | None:
    try:
        while True:
            await c.ws.get_message()
    except ConnectionClosed as closed:
        reason = closed.reason
    return reason.code if reason is not None else None


def resume_frame(old: WireClient, token: str | None = None, **payload: Any) -> str:
    return json.dumps(
        {
            "msg_type": "RESUME",
            "msg_id": "c-resume",
            "session_id": old.session_id,
            "payload": {"token": token or old.session["payload"]["resume"]["token"], **payload},
        }
    )


def is_done(rid: str):
    return lambda f: f["msg_type"] == "DONE" and f.get("request_id") == rid


def is_stream(seq: int):
    """A STREAM frame with this ``seq`` (of whichever request)."""
    return lambda f: f["msg_type"] == "STREAM" and f["seq"] == seq


def seqs(frames: list[Frame], rid: str, kind: str = "STREAM") -> list[int]:
    return [f["seq"] for f in frames if f["msg_type"] == kind and f.get("request_id") == rid]


async def drop(c: WireClient, how: str) -> None:
    """Drop the connection without a close frame: a TCP reset, or a plain FIN."""
    stream = c.stream
    if how == "reset" and isinstance(stream, trio.SocketStream):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await trio.aclose_forcefully(stream)


def lorem_agents() -> dict[str, Any]:
    return {"lorem": builtin.lorem}


@pytest.mark.parametrize("how", ["reset", "fin"])
async def test_a_reply_dropped_mid_stream_resumes_with_every_frame_once(start_server, how):
    server = await start_server(lorem_agents())
    words = 60
    async with connect(server, "socket") as a:
        assert set(a.session["payload"]["resume"]) == {"token", "window_s"}
        await a.request("r1", agent="lorem", words=words, words_per_s=200)
        first = await read_until(a, is_stream(4))
        await drop(a, how)
    async with connect(server, "socket") as b:
        await b.send_raw(resume_frame(a, last_seq={"r1": 4}))
        frames = await read_until(b, is_done("r1"))
    resumed = frames[0]
    assert resumed["msg_type"] == "RESUMED"
    assert resumed["ref"] == "c-resume"
    assert resumed["session_id"] == a.session_id
    assert resumed["payload"]["requests"]["r1"] in ("running", "done")
    assert resumed["payload"]["resume"]["token"] != a.session["payload"]["resume"]["token"]
    assert all(f["session_id"] == a.session_id for f in frames)
    received = seqs(first, "r1") + seqs(frames, "r1")
    assert received == list(range(words))
    dones = [f for f in frames if f["msg_type"] == "DONE"]
    assert len(dones) == 1
    assert dones[0]["payload"]["status"] == "completed"
    assert dones[0]["payload"]["frames"] == words


async def test_a_resume_after_the_window_is_unknown_and_the_requests_were_cancelled(
    start_server, autojump_clock
):
    probe = Probe()
    server = await start_server({"endless": endless(probe)}, resume_window_s=5)
    async with connect(server) as a:
        await a.request("r1", agent="endless")
        await read_until(a, lambda f: f["msg_type"] == "STREAM")
        await trio.aclose_forcefully(a.stream)
    await trio.sleep(4)
    assert probe.cancelled == []  # still inside the window: the request runs on
    with trio.fail_after(2):
        await server.wait_idle()
    assert probe.cancelled == ["r1"]
    assert server.stats()["sessions"] == 0
    async with connect(server) as b:
        await b.send_raw(resume_frame(a, last_seq={"r1": 0}))
        error = await read(b)
        assert error["msg_type"] == "ERROR"
        assert error["payload"]["code"] == "RESUME_UNKNOWN"
        assert error["ref"] == "c-resume"
        assert await close_code(b) == CloseCode.POLICY_VIOLATION


async def test_a_wrong_token_is_denied_and_the_session_still_resumes(start_server):
    server = await start_server(lorem_agents())
    async with connect(server, "socket") as a:
        await trio.aclose_forcefully(a.stream)
    async with connect(server, "socket") as b:
        await b.send_raw(resume_frame(a, token="x" * 32))
        error = await read(b)
        assert error["payload"]["code"] == "RESUME_DENIED"
        assert await close_code(b) == CloseCode.POLICY_VIOLATION
    async with connect(server, "socket") as c:
        await c.send_raw(resume_frame(a))
        assert (await read(c))["msg_type"] == "RESUMED"


async def test_two_connections_racing_with_one_token_exactly_one_wins(start_server):
    server = await start_server(lorem_agents())
    async with connect(server, "socket") as a:
        await trio.aclose_forcefully(a.stream)
    answers: list[str] = []
    async with connect(server, "socket") as b, connect(server, "socket") as c:

        async def race(client: WireClient) -> None:
            await client.send_raw(resume_frame(a))
            frame = await read(client)
            answers.append(frame["msg_type"] + ":" + frame.get("payload", {}).get("code", ""))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(race, b)
            nursery.start_soon(race, c)
    assert sorted(answers) == ["ERROR:RESUME_DENIED", "RESUMED:"]


async def test_a_zombie_connection_is_displaced_with_4001(start_server):
    server = await start_server(lorem_agents())
    async with connect(server, "socket") as zombie, connect(server, "socket") as b:
        await b.send_raw(resume_frame(zombie))
        resumed = await read(b)
        assert resumed["msg_type"] == "RESUMED"
        assert await close_code(zombie) == CloseCode.RESUMED_ELSEWHERE
        # The session goes on on the new connection.
        await b.request("r1", agent="lorem", words=3, words_per_s=0)
        frames = await read_until(b, is_done("r1"))
        assert seqs(frames, "r1") == [0, 1, 2]
        assert all(f["session_id"] == zombie.session_id for f in frames)


async def test_frames_evicted_from_the_buffer_end_the_request_with_resume_gap(start_server):
    server = await start_server(lorem_agents(), resume_buffer_kib=1)
    async with connect(server, "socket") as a:
        await a.request("r1", agent="lorem", words=200, words_per_s=0)
        # Twenty frames read: more than the 1 KiB buffer holds were written, so
        # frame 3 is gone from it however many more went out before the close.
        await read_until(a, is_stream(20))
        session = server.sessions[a.session_id]
        await trio.aclose_forcefully(a.stream)
    await trio.testing.wait_all_tasks_blocked()
    assert session.replay is not None
    written = session.replay.frames_written("r1")
    assert written > 20
    async with connect(server, "socket") as b:
        await b.send_raw(resume_frame(a, last_seq={"r1": 2}))
        frames = await read_until(b, is_done("r1"))
    assert frames[0]["payload"]["requests"] == {"r1": "done"}
    assert seqs(frames, "r1") == []  # nothing of a reply with a hole
    (done,) = [f for f in frames if f["msg_type"] == "DONE"]
    assert done["payload"]["status"] == "failed"
    assert done["payload"]["error"]["code"] == "RESUME_GAP"
    assert done["payload"]["frames"] == session.replay.frames_written("r1")


async def test_a_detached_session_parks_its_agent_on_backpressure(start_server):
    server = await start_server(lorem_agents(), stream_lane_capacity=8)
    async with connect(server) as a:
        await a.request("r1", agent="lorem", words=1_000_000, words_per_s=0)
        await read_until(a, lambda f: f["msg_type"] == "STREAM")
        session = server.sessions[a.session_id]
        await trio.aclose_forcefully(a.stream)
    await trio.testing.wait_all_tasks_blocked()
    (record,) = session.registry.running()
    queued = record.frames_queued
    assert session.connection is None
    assert session.lanes.stream_depth <= session.lanes.stream_capacity + 1
    assert session.replay is not None
    assert session.replay.bytes_held <= session.replay.capacity_bytes
    # Parked: time passes and nothing more is queued, nothing grows.
    await trio.sleep(0.05)
    await trio.testing.wait_all_tasks_blocked()
    assert record.frames_queued == queued
    assert session.registry.running_count == 1
    async with connect(server) as b:
        await b.send_raw(resume_frame(a, last_seq={"r1": record.frames_written - 1}))
        assert (await read(b))["payload"]["requests"] == {"r1": "running"}
        ack = await b.interrupt("r1")
        frames = await read_until(b, is_done("r1"))
    assert any(f["msg_type"] == "INTERRUPT_ACK" and f["ref"] == ack for f in frames)


async def test_an_interrupt_right_after_resume_is_acknowledged_after_the_replay(start_server):
    server = await start_server(lorem_agents())
    async with connect(server, "socket") as a:
        await a.request("r1", agent="lorem", words=10_000, words_per_s=100)
        first = await read_until(a, is_stream(1))
        await trio.aclose_forcefully(a.stream)
    async with connect(server, "socket") as b:
        await b.send_raw(resume_frame(a, last_seq={"r1": 0}))
        ack_id = await b.interrupt("r1")
        frames = await read_until(b, is_done("r1"))
    kinds = [f["msg_type"] for f in frames]
    assert kinds[0] == "RESUMED"
    ack_at = kinds.index("INTERRUPT_ACK")
    assert frames[ack_at]["ref"] == ack_id
    assert "STREAM" not in kinds[ack_at:]
    received = seqs(first, "r1")[:1] + seqs(frames, "r1")
    assert received == list(range(len(received)))
    (done,) = [f for f in frames if f["msg_type"] == "DONE"]
    assert done["payload"]["interrupted"] is True
    assert done["payload"]["frames"] == len(received)


async def test_an_ack_lost_with_its_connection_is_reported_in_resumed(start_server):
    server = await start_server({"endless": endless()})
    async with connect(server) as a:
        await a.request("r1", agent="endless")
        await read_until(a, lambda f: f["msg_type"] == "STREAM")
        await a.interrupt("r1")
        await trio.testing.wait_all_tasks_blocked()
        await trio.aclose_forcefully(a.stream)
    async with connect(server) as b:
        await b.send_raw(resume_frame(a, last_seq={}))
        resumed = await read(b)
    assert list(resumed["payload"]["interrupts"].values()) == [["r1"]]


async def test_a_spoken_reply_resumes_with_its_audio_sequence_intact(start_server):
    server = await start_server({"echo": builtin.echo}, speech="builtin", audio_queue_ms=400)
    text = " ".join(f"word{i}" for i in range(30))
    async with connect(server, "socket") as a:
        await a.request("r1", text, agent="echo", voice=True, audio_pace=0)
        first = await read_until(a, lambda f: f["msg_type"] == "AUDIO" and f["seq"] == 2)
        await trio.aclose_forcefully(a.stream)
    last_text = max(seqs(first, "r1"), default=-1)
    async with connect(server, "socket") as b:
        await b.send_raw(resume_frame(a, last_seq={"r1": last_text}, last_audio_seq={"r1": 2}))
        frames = await read_until(b, is_done("r1"))
    audio = seqs(first, "r1", "AUDIO") + seqs(frames, "r1", "AUDIO")
    assert audio == list(range(len(audio)))
    words = seqs(first, "r1") + seqs(frames, "r1")
    assert words == list(range(30))
    (done,) = [f for f in frames if f["msg_type"] == "DONE"]
    assert done["payload"]["frames"] == 30


async def test_a_resume_that_is_not_the_first_frame_is_invalid(start_server):
    server = await start_server(lorem_agents())
    async with connect(server) as a:
        await a.heartbeat()
        await a.send_raw(resume_frame(a))
        frames = await read_until(a, lambda f: f["msg_type"] == "ERROR")
        assert frames[-1]["payload"]["code"] == "INVALID_MESSAGE"


async def test_a_close_with_1000_ends_the_session_at_once(start_server):
    probe = Probe()
    server = await start_server({"endless": endless(probe)})
    async with connect(server) as a:
        await a.request("r1", agent="endless")
        await read_until(a, lambda f: f["msg_type"] == "STREAM")
    with trio.fail_after(5):
        await server.wait_idle()
    assert probe.cancelled == ["r1"]


async def test_shutdown_ends_a_detached_session_at_once(start_server):
    probe = Probe()
    server = await start_server({"endless": endless(probe)})
    async with connect(server) as a:
        await a.request("r1", agent="endless")
        await read_until(a, lambda f: f["msg_type"] == "STREAM")
        await trio.aclose_forcefully(a.stream)
    await trio.testing.wait_all_tasks_blocked()
    assert server.stats()["sessions"] == 1
    server.shutdown("test")
    with trio.fail_after(2):
        await server.wait_idle()
    assert probe.cancelled == ["r1"]


async def test_a_request_the_session_does_not_know_ends_with_the_frames_the_client_holds(
    start_server,
):
    """The client names a request with frames received that the session never knew
    (in a cluster: a node stalled or killed before it stored it): its RESUME_GAP DONE
    counts what the client holds, so DONE.frames still equals the seqs received."""
    server = await start_server(lorem_agents())
    async with connect(server, "socket") as a:
        await drop(a, "reset")
    async with connect(server, "socket") as b:
        await b.send_raw(resume_frame(a, last_seq={"ghost": 4, "never-read": -1}))
        frames = await read_until(b, is_done("never-read"))
    assert frames[0]["payload"]["requests"] == {"ghost": "done", "never-read": "done"}
    dones = {f["request_id"]: f["payload"] for f in frames if f["msg_type"] == "DONE"}
    assert dones["ghost"]["error"]["code"] == "RESUME_GAP"
    assert dones["ghost"]["frames"] == 5
    assert dones["never-read"]["frames"] == 0
