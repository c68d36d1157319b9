"""Nodes of a cluster in one test process: each an AgentServer and a ClusterNode on a
real redis-server (one per test module), with its own store connection.

Each test gets its own key prefix, so tests never see each other's sessions.
``stop()`` ends a node as a crash would for the others (its lease is released, so
they see it dead at once; a lease that *expires* is tested with real processes).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pytest
import trio

from trio_agent.agents import Agent
from trio_agent.cluster.node import ClusterNode
from trio_agent.cluster.redis_store import RedisStore, open_redis_store
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig
from trio_agent.testing.processes import redis_executable

#: The marks of a module whose tests run nodes on a real redis-server (its fixtures,
#: ``redis_url`` and ``nodes``, are in ``tests/conftest.py``).
NEEDS_REDIS = [
    pytest.mark.redis,
    pytest.mark.skipif(
        redis_executable() is None,
        reason="no redis-server or valkey-server on PATH (Debian: apt-get install redis-server)",
    ),
]


@dataclass
class Node:
    server: AgentServer
    node: ClusterNode
    store: RedisStore
    scope: trio.CancelScope

    def stop(self) -> None:
        """Stop the node's server and tasks at once (no drain)."""
        self.scope.cancel()


class Nodes:
    """Start nodes sharing one Redis and one key prefix, in ``nursery``."""

    def __init__(self, nursery: trio.Nursery, redis_url: str) -> None:
        self._nursery = nursery
        self._url = redis_url
        self.prefix = f"test-{secrets.token_hex(4)}"

    async def start(
        self, name: str, agents: Mapping[str, Agent] | None = None, **settings: Any
    ) -> Node:
        config = replace(
            ServerConfig(port=0, redis_url=self._url, node_id=name, node_lease_s=1.0), **settings
        )
        return await self._nursery.start(self._run, config, agents)

    async def _run(
        self,
        config: ServerConfig,
        agents: Mapping[str, Agent] | None,
        *,
        task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as scope:
            async with open_redis_store(self._url, prefix=self.prefix) as store:
                server = AgentServer(config, agents)
                node = ClusterNode(server, store)
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    await nursery.start(server.run)
                    task_status.started(Node(server, node, store, scope))
