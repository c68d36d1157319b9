"""At the file descriptor limit, accept() fails with EMFILE until a connection closes:
the server backs off and logs about once a second, with a count, instead of a
traceback every 100 ms."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from trio_agent import AgentServer, ServerConfig
from trio_agent.server import agent_server
from trio_agent.server.accept import LOG_INTERVAL_S, MAX_BACKOFF_S, AcceptBackoff


class ExhaustedListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose accept() fails as at the fd limit, ``failures`` times (``None``:
    forever), then hands out the server side of ``streams``."""

    def __init__(self, failures: int | None = None) -> None:
        self.failures = failures
        self.attempts = 0
        self.accepted: trio.MemorySendChannel[trio.abc.Stream]
        self.accepted, self._to_accept = trio.open_memory_channel[trio.abc.Stream](10)

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        if self.failures is None or self.attempts <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        return await self._to_accept.receive()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> ExhaustedListener:
    fake = ExhaustedListener()

    async def open_listeners(
        config: ServerConfig, context: object, **options: object
    ) -> list[ExhaustedListener]:
        return [fake]

    monkeypatch.setattr(agent_server, "open_listeners", open_listeners)
    monkeypatch.setattr(agent_server, "listening_port", lambda listener: 1)
    return fake


async def run_for(seconds: float, nursery: trio.Nursery) -> AgentServer:
    server = AgentServer(ServerConfig(port=0, slow_step_warn_s=0))
    await nursery.start(server.run)
    await trio.sleep(seconds)
    server.shutdown()
    await server.wait_idle()
    return server


async def test_emfile_is_logged_about_once_a_second_with_a_count(
    listener, nursery, autojump_clock, log_records, caplog
):
    caplog.set_level(logging.DEBUG)
    await run_for(10, nursery)
    lines = [r for r in log_records if "accept" in r["message"]]
    lines += [r for r in caplog.records if "accept" in r.getMessage()]  # trio's own logger
    assert 1 <= len(lines) <= 11, len(lines)
    assert lines[0]["level"].name == "WARNING"
    assert "EMFILE" in lines[0]["message"]
    assert sum(r["extra"]["failures"] for r in lines) <= listener.attempts
    assert listener.attempts <= 10 / MAX_BACKOFF_S + 5  # backed off, not every 100 ms


async def test_accepting_resumes_after_the_failures(
    monkeypatch, nursery, autojump_clock, log_records
):
    fake = ExhaustedListener(failures=3)

    async def open_listeners(
        config: ServerConfig, context: object, **options: object
    ) -> list[ExhaustedListener]:
        return [fake]

    monkeypatch.setattr(agent_server, "open_listeners", open_listeners)
    monkeypatch.setattr(agent_server, "listening_port", lambda listener: 1)
    server = AgentServer(ServerConfig(port=0, slow_step_warn_s=0))
    await nursery.start(server.run)
    client, server_side = trio.testing.memory_stream_pair()
    await fake.accepted.send(server_side)
    await client.send_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await client.receive_some()).startswith(b"HTTP/1.1 200 ")
    assert [r["extra"] for r in log_records if r["message"] == "accepting again"] == [
        {"failures_since_last_report": 2}
    ]
    server.shutdown()


def test_the_backoff_doubles_to_its_cap_and_reports_once_per_interval():
    backoff = AcceptBackoff()
    now = 0.0
    delays, reports = [], []
    while now < 10:
        delay, report = backoff.failed(now)
        delays.append(delay)
        reports.append(report)
        now += delay
    assert delays[:5] == [0.1, 0.2, 0.4, 0.8, MAX_BACKOFF_S]
    assert reports[0] == 1
    assert sum(r for r in reports if r) + backoff.unreported == len(delays)
    assert len([r for r in reports if r]) <= 10 / LOG_INTERVAL_S + 1
    backoff.succeeded()
    assert backoff.failed(now)[0] == 0.1
