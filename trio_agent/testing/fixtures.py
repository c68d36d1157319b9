"""The pytest fixtures of the trio-agent plugin (they need pytest-trio).

``agent_server`` runs a traced server in the test's nursery; ``agent_client``
connects to it in strict mode; ``agent_cluster`` runs a cluster of processes
(redis-server, three nodes, HAProxy) for a module. docs/testing.md shows how to
override them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Literal

import pytest
import trio
import trio.testing

from trio_agent.agents import Agent, builtin_agents
from trio_agent.client import AgentClient, open_agent_client
from trio_agent.observability.trace import MemoryTracer
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig
from trio_agent.testing.cluster import LocalCluster, cluster_unavailable


@pytest.fixture
def agent_server_agents() -> Mapping[str, Agent]:
    """The agents ``agent_server`` serves: the built-in ``lorem`` and ``echo`` unless overridden."""
    return builtin_agents()


@pytest.fixture
def agent_server_config() -> ServerConfig:
    """The settings of ``agent_server``: the defaults on a free port unless overridden."""
    return ServerConfig(port=0)


@pytest.fixture
def agent_transport() -> Literal["memory", "socket"]:
    """How ``agent_client`` reaches ``agent_server``: ``"memory"`` unless overridden."""
    return "memory"


@pytest.fixture
async def agent_server(
    nursery: trio.Nursery,
    agent_server_agents: Mapping[str, Agent],
    agent_server_config: ServerConfig,
) -> AgentServer:
    """A traced server in the test's nursery, listening on a loopback port; stops with the test."""
    server = AgentServer(agent_server_config, agent_server_agents, trace=MemoryTracer())
    await nursery.start(server.run)
    return server


@pytest.fixture
async def agent_client(
    nursery: trio.Nursery,
    agent_server: AgentServer,
    agent_transport: Literal["memory", "socket"],
) -> AsyncIterator[AgentClient]:
    """The project's client, strict and without heartbeats, connected to ``agent_server``."""
    stream: trio.abc.Stream | None = None
    if agent_transport == "memory":
        stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(agent_server.serve_stream, server_stream)
    elif agent_transport != "socket":
        raise ValueError(f"agent_transport must be 'memory' or 'socket', not {agent_transport!r}")
    async with open_agent_client(
        agent_server.url, strict=True, heartbeat_s=None, stream=stream
    ) as client:
        yield client


@pytest.fixture(scope="module")
def agent_cluster() -> Iterator[LocalCluster]:
    """redis-server, three nodes serving the built-in agents, and HAProxy in front, as
    processes on loopback for the test module (:class:`~trio_agent.testing.cluster.LocalCluster`):
    ``await check_agent("lorem", url=agent_cluster.url)``. Skipped, saying why, when
    redis-server (or valkey-server) or haproxy is not installed."""
    why = cluster_unavailable()
    if why is not None:
        pytest.skip(f"cluster tests skipped: {why}")
    with LocalCluster(nodes=3) as cluster:
        yield cluster
