from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest
import trio

from trio_agent import Agent, AgentServer, ServerConfig

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
