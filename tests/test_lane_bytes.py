"""What a client that never reads can make the server hold: the priority lane is
bounded in bytes as well as in frames (docs/security.md, "Slow readers").

The echoes of a client's strings (an INTERRUPT's ``reason`` in its ACK, a bad
frame's ``msg_id`` in its ERROR) are as large as the frame that carried them, and
a 4-byte character counts as one toward the message size; the lane's byte bound
holds whatever the parser lets through.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from handshakes import RawClient

from trio_agent import agents as builtin
from trio_agent.protocol.constants import FrameKind
from trio_agent.server.config import ServerConfig
from trio_agent.server.lanes import LaneOverflow, Outbound, OutboundLanes
from trio_agent.server.registry import RequestRecord

BOUND = ServerConfig().priority_lane_bytes


def _queued_bytes(lanes: OutboundLanes) -> int:
    """The UTF-8 bytes of every control frame waiting in the priority lane, counted
    here from the frames themselves (not from the lane's own accounting)."""
    total = 0
    for frame in list(lanes._priority):
        data = frame.data
        if isinstance(data, str):
            total += len(data.encode("utf-8", "surrogatepass"))
        elif data is not None:
            total += len(data)
    return total


def _echoed(n: int, kind: str, char: str) -> str:
    """A frame whose answer echoes ``n`` characters ``char``."""
    if kind == "interrupt":
        return json.dumps(
            {"msg_type": "INTERRUPT", "msg_id": "i", "payload": {"reason": char * n}},
            ensure_ascii=False,
        )
    # Not a valid message (no msg_type); its ERROR echoes the msg_id.
    return json.dumps({"msg_id": char * n}, ensure_ascii=False)


@pytest.mark.parametrize("kind", ["interrupt", "error"])
@pytest.mark.parametrize("char", ["a", "\N{GRINNING FACE}"], ids=["ascii", "emoji"])
async def test_a_client_that_never_reads_cannot_fill_the_priority_lane_past_its_byte_bound(
    start_server, log_records, kind, char
):
    # The client leaves by dropping the connection: with resumption off its
    # session ends at once, which is what this test waits for.
    server = await start_server({"lorem": builtin.lorem}, resume_window_s=0)
    config = server.config
    # As large as the message size limit allows (in UTF-8 bytes).
    n = (config.max_message_bytes - 200) // len(char.encode())
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    client = RawClient(stream)
    assert await client.handshake() == 101
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    (session,) = server.sessions.values()
    peak = 0
    closed = False
    # Under the rate limit (the burst), and never reading a byte.
    for _ in range(12):
        try:
            with trio.fail_after(10):
                await client.send(_echoed(n, kind, char))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed = True
            break
        await trio.testing.wait_all_tasks_blocked(cushion=0.02)
        peak = max(peak, _queued_bytes(session.lanes))
        if session.session_id not in server.sessions:
            closed = True
            break
        assert session.lanes.priority_bytes == _queued_bytes(session.lanes)
    assert peak <= BOUND
    await stream.aclose()
    with trio.fail_after(5):
        await server.wait_idle()
    if closed:
        ends = [r for r in log_records if r["message"] == "session closed"]
        assert ends
        assert ends[-1]["extra"]["code"] == 1008
        assert "does not read" in ends[-1]["extra"]["reason"]


def test_the_lane_refuses_a_frame_that_would_pass_its_byte_bound():
    lanes = OutboundLanes(stream_capacity=4, priority_capacity=100, priority_bytes=1000)
    lanes.push_priority(Outbound(FrameKind.CONTROL, "x" * 600))
    with pytest.raises(LaneOverflow):
        lanes.push_priority(Outbound(FrameKind.CONTROL, "\N{GRINNING FACE}" * 101))
    assert lanes.priority_bytes == 600
    lanes.push_priority(Outbound(FrameKind.CONTROL, "y" * 400))
    assert lanes.priority_bytes == 1000


async def test_a_taken_frame_frees_its_bytes():
    lanes = OutboundLanes(stream_capacity=4, priority_capacity=100, priority_bytes=1000)
    lanes.push_priority(Outbound(FrameKind.CONTROL, "x" * 999))
    await lanes.next_frame()
    assert lanes.priority_bytes == 0
    lanes.push_priority(Outbound(FrameKind.CONTROL, "x" * 999))


def test_a_frame_larger_than_the_bound_overflows_even_an_empty_lane():
    lanes = OutboundLanes(stream_capacity=4, priority_capacity=100, priority_bytes=1000)
    with pytest.raises(LaneOverflow):
        lanes.push_priority(Outbound(FrameKind.CONTROL, "x" * 1001))


async def test_the_stream_lane_has_no_room_past_its_byte_bound_and_a_pop_or_discard_frees_it():
    lanes = OutboundLanes(stream_capacity=32, priority_capacity=8, stream_bytes=1000)
    first, second = (
        RequestRecord(request_id=rid, agent="a", scope=trio.CancelScope()) for rid in "ab"
    )
    await lanes.wait_for_stream_room(first)
    lanes.push_stream(Outbound(FrameKind.STREAM, "x" * 600, first))
    assert lanes.has_stream_room(first)
    lanes.push_stream(Outbound(FrameKind.STREAM, "\N{GRINNING FACE}" * 150, first))
    assert lanes.stream_bytes == 1200
    assert not lanes.has_stream_room(first)
    # A request with nothing queued still gets its one frame.
    assert lanes.has_stream_room(second)
    await lanes.next_frame()
    lanes.frame_written()
    assert lanes.stream_bytes == 600
    assert lanes.has_stream_room(first)
    assert lanes.discard(first) == 1
    assert lanes.stream_bytes == 0
