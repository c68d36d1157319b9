"""trio-agent: stream an agent's reply over WebSocket and let the client interrupt it.

The public surface is small:

* :class:`AgentServer` and :func:`serve` run the server; :class:`ServerConfig` shapes it.
* :class:`Agent`, :class:`AgentRequest`, :class:`ResponseStream` and
  :class:`AgentError` are what you need to write an agent.
* :mod:`trio_agent.protocol` holds every wire message as a pydantic model.
* :mod:`trio_agent.client` is the Python client (``open_agent_client``); see
  ``docs/client.md``.
"""

__version__ = "0.1.0"

from .agents import Agent, AgentError, AgentRequest, ResponseStream
from .config import ServerConfig
from .server import AgentServer, serve

__all__ = [
    "Agent",
    "AgentError",
    "AgentRequest",
    "AgentServer",
    "ResponseStream",
    "ServerConfig",
    "__version__",
    "serve",
]
