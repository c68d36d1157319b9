from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import trio
from loguru import logger

from trio_agent import Agent, AgentServer, ServerConfig
from trio_agent.testing.cluster import cluster_unavailable
from trio_agent.testing.processes import redis_server

if TYPE_CHECKING:
    from tests.cluster_nodes import Nodes

StartServer = Callable[..., Awaitable[AgentServer]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``server = await start_server(agents=..., **settings)``: a server on a free port,
    running in the test's nursery (so it stops when the test ends)."""

    async def start(agents: Mapping[str, Agent] | None = None, **settings: Any) -> AgentServer:
        server = AgentServer(replace(ServerConfig(port=0), **settings), agents)
        await nursery.start(server.run)
        return server

    return start


# ---------------------------------------------------------------- browser tests
#
# Tests marked `browser` drive Debian's Chromium through Playwright. They run whenever
# a Chromium is found, and the run says loudly when they cannot.

CHROMIUM = os.environ.get("TRIO_AGENT_CHROMIUM") or shutil.which("chromium")


def browser_tests_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if CHROMIUM is None:
        return "no `chromium` on PATH (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


# Tests marked `espeak` run the real espeak-ng synthesiser (Debian package espeak-ng;
# .ci/run installs it); without it they are skipped, and the run says so loudly.

ESPEAK_NG = shutil.which("espeak-ng")

# Tests marked `cluster` run redis-server, nodes and HAProxy as processes (Debian
# packages redis-server and haproxy; .ci/run installs them); without them they are
# skipped, and the run says so loudly.

CLUSTER_UNAVAILABLE = cluster_unavailable()


def pytest_report_header(config: pytest.Config) -> list[str]:
    why = browser_tests_unavailable()
    return [
        f"browser tests: {CHROMIUM}" if why is None else f"BROWSER TESTS WILL BE SKIPPED: {why}",
        f"espeak-ng tests: {ESPEAK_NG}"
        if ESPEAK_NG
        else "ESPEAK-NG TESTS WILL BE SKIPPED: espeak-ng is not installed",
        "cluster tests: redis-server and haproxy found"
        if CLUSTER_UNAVAILABLE is None
        else f"CLUSTER TESTS WILL BE SKIPPED: {CLUSTER_UNAVAILABLE}",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = browser_tests_unavailable()
    skips = {
        "browser": None
        if why is None
        else pytest.mark.skip(reason=f"browser tests skipped: {why}"),
        "espeak": None
        if ESPEAK_NG
        else pytest.mark.skip(reason="espeak-ng tests skipped: espeak-ng is not installed"),
        "cluster": None
        if CLUSTER_UNAVAILABLE is None
        else pytest.mark.skip(reason=f"cluster tests skipped: {CLUSTER_UNAVAILABLE}"),
    }
    for item in items:
        for marker, skip in skips.items():
            if skip is not None and marker in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    why = browser_tests_unavailable()
    skipped = terminalreporter.stats.get("skipped", [])
    browser = [r for r in skipped if "browser" in r.keywords]
    if why is not None and browser:
        terminalreporter.write_sep(
            "!", f"{len(browser)} BROWSER TESTS SKIPPED: {why}", red=True, bold=True
        )
    espeak = [r for r in skipped if "espeak" in r.keywords]
    if ESPEAK_NG is None and espeak:
        terminalreporter.write_sep(
            "!",
            f"{len(espeak)} ESPEAK-NG TESTS SKIPPED: espeak-ng is not installed "
            "(Debian: apt-get install espeak-ng)",
            red=True,
            bold=True,
        )
    cluster = [r for r in skipped if "cluster" in r.keywords]
    if CLUSTER_UNAVAILABLE is not None and cluster:
        terminalreporter.write_sep(
            "!",
            f"{len(cluster)} CLUSTER TESTS SKIPPED: {CLUSTER_UNAVAILABLE}",
            red=True,
            bold=True,
        )


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    """Every log record (TRACE and up) while the test runs."""
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda message: records.append(message.record), level="TRACE")
    yield records
    logger.remove(sink)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A redis-server of the test module's own, on a free loopback port."""
    with redis_server() as server:
        yield server.url


@pytest.fixture
async def nodes(nursery: trio.Nursery, redis_url: str) -> Nodes:
    """Cluster nodes in this test's nursery, on the module's redis-server
    (``tests/cluster_nodes.py``; imported here, as cluster mode is an extra)."""
    from tests.cluster_nodes import Nodes

    return Nodes(nursery, redis_url)
