"""The ``openai`` agent: a response streamed from any OpenAI-compatible chat model.

``agent`` is the agent, ``upstream`` one streamed completion (the upstream client),
``history`` the conversation kept to what the user received. ``docs/agents.md``
explains the design. The modules are internal.
"""

from trio_agent.agents.openai.agent import (
    OpenAIAgent,
    OpenAIConfig,
    openai_agent_from,
)
from trio_agent.agents.openai.history import (
    ChatHistory,
)

__all__ = [
    "ChatHistory",
    "OpenAIAgent",
    "OpenAIConfig",
    "openai_agent_from",
]
