"""Agents: what one is (the contract), the built-in ones, and the ``openai`` agent.

An agent is ``async def agent(request, stream)``; ``docs/agents.md`` explains the
contract and its cancellation rules. Agents never import the server. The names
below are the public ones; the modules are internal.
"""

from trio_agent.agents.api import (
    Agent,
    AgentError,
    AgentRequest,
    AgentTimeout,
    RequestOutcome,
    ResponseStream,
    agent_entry,
    describe,
    json_fields,
    open_agents,
    option_number,
)
from trio_agent.agents.builtin import (
    builtin_agents,
    echo,
    lorem,
    lorem_deltas,
    lorem_words,
)
from trio_agent.agents.cleanup import (
    shielded_cleanup,
)
from trio_agent.agents.portable import export_session_states, restore_session_states

__all__ = [
    "Agent",
    "AgentError",
    "AgentRequest",
    "AgentTimeout",
    "RequestOutcome",
    "ResponseStream",
    "agent_entry",
    "builtin_agents",
    "describe",
    "echo",
    "export_session_states",
    "json_fields",
    "lorem",
    "lorem_deltas",
    "lorem_words",
    "open_agents",
    "option_number",
    "restore_session_states",
    "shielded_cleanup",
]
