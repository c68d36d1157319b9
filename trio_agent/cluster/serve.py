"""``trio-agent serve --redis-url ...``: a server that is a node of a cluster."""

from __future__ import annotations

from collections.abc import Mapping

import trio

from trio_agent.agents import Agent
from trio_agent.cluster.node import ClusterNode
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig
from trio_agent.server.serving import serve_server

__all__ = ["serve_node"]

#: How long a stopping node waits for its mirror to reach the store.
FLUSH_TIMEOUT_S = 2.0


async def serve_node(
    config: ServerConfig, agents: Mapping[str, Agent] | None = None, *, reuse_port: bool = False
) -> None:
    """Serve as a node of the cluster on ``config.redis_url`` until SIGINT or SIGTERM.

    ``reuse_port``: listen with ``SO_REUSEPORT`` (one of ``--workers``). The node's tasks (lease, control channel, mirror) start before the server
    listens and stop after it has drained, once what it wrote has reached the
    store (bounded by :data:`FLUSH_TIMEOUT_S`) and its lease is released.
    """
    from trio_agent.cluster.redis_store import open_redis_store

    server = AgentServer(config, agents, reuse_port=reuse_port)
    async with open_redis_store(config.redis_url) as store:
        node = ClusterNode(server, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await serve_server(server)
            await node.flush(FLUSH_TIMEOUT_S)
            nursery.cancel_scope.cancel(reason="server stopped")
