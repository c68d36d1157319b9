"""The server: a listener, a nursery of sessions, a cancel scope per request.

Start with ``docs/architecture.md``: it draws the cancel-scope tree across
``agent_server`` (the listener and shutdown), ``session`` (one connection) and
``registry`` (the pure decisions). The names below are the public ones; the
modules are internal.
"""

from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import (
    ServerConfig,
    add_config_arguments,
    config_from,
    parse_config,
)
from trio_agent.server.serving import serve
from trio_agent.server.startup import StartupError

__all__ = [
    "AgentServer",
    "ServerConfig",
    "StartupError",
    "add_config_arguments",
    "config_from",
    "parse_config",
    "serve",
]
