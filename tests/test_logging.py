"""Every log line of a session carries its session_id, and request lines their request_id."""

from __future__ import annotations

import trio

from trio_agent import AgentRequest, ResponseStream
from trio_agent import agents as builtin
from trio_agent.testing.wire import connect


async def one_word_then_wait(request: AgentRequest, stream: ResponseStream) -> None:
    """Sends a word, then waits with no deadline of its own: the only way out is a
    cancellation of its request scope, so ``Cancelled.source`` is unambiguous."""
    await stream.send("word")
    await trio.sleep_forever()


async def test_lifecycle_lines_carry_session_and_request_ids(start_server, log_records):
    server = await start_server({"lorem": builtin.lorem, "endless": one_word_then_wait})
    async with connect(server) as c:
        await c.request("r1", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        ack = await c.interrupt("r1")
        await c.until_ack(ack)
        await c.until_done("r1")
    await server.wait_idle()

    by_message = {}
    for record in log_records:
        by_message.setdefault(record["message"], []).append(record)
    for message in (
        "session opened",
        "request started",
        "interrupt processed",
        "request ended",
        "session closed",
    ):
        assert by_message[message][0]["extra"]["session_id"] == c.session_id, message
    for message in ("request started", "request cancelled", "request ended"):
        assert by_message[message][0]["extra"]["request_id"] == "r1", message
    interrupt = by_message["interrupt processed"][0]["extra"]
    assert interrupt["interrupted"] == ["r1"]
    assert interrupt["interrupt"] == ack
    assert by_message["interrupt acknowledged"][0]["extra"]["latency_us"] >= 0
    cancelled = by_message["request cancelled"][0]["extra"]
    assert cancelled["source"] == "explicit"
    assert ack in cancelled["cancel_reason"]
    assert by_message["request ended"][0]["extra"]["status"] == "interrupted"
