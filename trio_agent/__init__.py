"""trio-agent: stream an agent's response over WebSocket and let the client interrupt it.

The public surface is small:

* :class:`AgentServer` and :func:`serve` run the server; :class:`ServerConfig` shapes it.
* :class:`Agent`, :class:`AgentRequest`, :class:`ResponseStream`, :class:`AgentError`,
  :class:`AgentTimeout`, :class:`RequestOutcome` and :func:`shielded_cleanup` are
  what you need to write an agent.
* :func:`open_agent_client` is the Python client.
* :mod:`trio_agent.protocol` holds every wire message as a pydantic model, and
  :mod:`trio_agent.testing` checks your own agent against the guarantees.

``docs/architecture.md`` maps the subpackages and the arrows between them.
"""

from trio_agent._version import __version__
from trio_agent.agents import (
    Agent,
    AgentError,
    AgentRequest,
    AgentTimeout,
    RequestOutcome,
    ResponseStream,
    shielded_cleanup,
)
from trio_agent.client import open_agent_client
from trio_agent.server import AgentServer, ServerConfig, serve

__all__ = [
    "Agent",
    "AgentError",
    "AgentRequest",
    "AgentServer",
    "AgentTimeout",
    "RequestOutcome",
    "ResponseStream",
    "ServerConfig",
    "__version__",
    "open_agent_client",
    "serve",
    "shielded_cleanup",
]
