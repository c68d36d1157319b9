"""A client cannot fill the disk through the log (docs/security.md, "Secrets and logs").

Every value a client chose is cut to a few hundred characters, marked as cut,
and each session logs a bounded number of lines of one event per window,
counting the rest in one summary line.
"""

from __future__ import annotations

import io
import json

import trio
from loguru import logger
from testing_agents import endless

from trio_agent import AgentServer, ServerConfig
from trio_agent import agents as builtin
from trio_agent.observability.logs import (
    LOG_LINES_PER_WINDOW,
    LOG_VALUE_CHARS,
    LogBudget,
    clip,
    configure_logging,
)
from trio_agent.observability.trace import MemoryTracer
from trio_agent.protocol.bounds import MAX_REASON_CHARS
from trio_agent.testing.wire import connect

ROUNDS = 60
#: The longest reason the protocol accepts: still longer than a logged value may be.
REASON = ("why" * MAX_REASON_CHARS)[:MAX_REASON_CHARS]


async def test_interrupts_with_long_reasons_write_a_bounded_log(start_server):
    log = io.StringIO()
    sink = logger.add(log, level="DEBUG", serialize=True)
    try:
        server = await start_server(
            {"lorem": builtin.lorem, "endless": endless()}, rate_limit_per_s=0
        )
        async with connect(server) as c:
            for i in range(ROUNDS):
                request_id = f"r{i}"
                await c.request(request_id, agent="endless")
                await c.recv_until(lambda f: f["msg_type"] == "STREAM")
                await c.interrupt(request_id, reason=REASON)
                with trio.fail_after(5):
                    await c.until_done(request_id)
        with trio.fail_after(5):
            await server.wait_idle()
    finally:
        logger.remove(sink)
    lines = [json.loads(line)["record"] for line in log.getvalue().splitlines()]
    written = len(log.getvalue().encode())
    # Without the bounds: 3 lines per round holding the reason, and every round logged.
    assert written < 150_000, written
    assert max(len(line) for line in log.getvalue().splitlines()) < 4000
    processed = [r for r in lines if r["message"] == "interrupt processed"]
    assert len(processed) == LOG_LINES_PER_WINDOW
    assert processed[0]["extra"]["reason"] == clip(REASON)
    assert processed[0]["extra"]["reason"].endswith(f"…(+{len(REASON) - LOG_VALUE_CHARS} chars)")
    summaries = {
        r["extra"]["event"]: r["extra"]["suppressed"]
        for r in lines
        if r["message"] == "repeated log lines suppressed"
    }
    for event in ("interrupt processed", "request started", "request ended"):
        assert summaries[event] == ROUNDS - LOG_LINES_PER_WINDOW, event


async def test_a_text_log_line_is_cut_whoever_logged_it(capsys):
    configure_logging("INFO", "text")
    try:
        logger.info("handshake refused", target="/ws?" + "a" * 5000)
    finally:
        logger.remove()
    err = capsys.readouterr().err
    assert "…(+4804 chars)" in err
    assert len(err) < 600


async def test_trace_events_cut_client_strings(nursery):
    tracer = MemoryTracer()
    server = AgentServer(
        ServerConfig(port=0), {"lorem": builtin.lorem, "endless": endless()}, trace=tracer
    )
    await nursery.start(server.run)
    async with connect(server) as c:
        await c.request("r1", agent="endless")
        await c.recv_until(lambda f: f["msg_type"] == "STREAM")
        await c.interrupt("r1", reason=REASON)
        await c.until_done("r1")
    reads = [e for e in tracer.events if e["event"] == "interrupt_read"]
    assert reads[0]["reason"] == clip(REASON)


def test_the_budget_counts_what_it_suppresses_and_tells_it_once():
    budget = LogBudget(per_window=2, window_s=10)
    assert [budget.allow("e", t) for t in (0, 1, 2, 3)] == [
        (True, 0),
        (True, 0),
        (False, 0),
        (False, 0),
    ]
    assert budget.allow("e", 10) == (True, 2)
    assert budget.allow("e", 11) == (True, 0)
    assert budget.allow("e", 12) == (False, 0)
    assert list(budget.remaining()) == [("e", 1)]
    assert list(budget.remaining()) == []
