"""Test your own agent against the protocol's guarantees: a pytest plugin and a checker.

::

    from trio_agent.testing import check_agent

    async def test_my_agent_keeps_every_guarantee():
        await check_agent(MyAgent())

Installing trio-agent registers this module as a pytest plugin (entry point
``pytest11``), which gives every test suite the fixtures ``agent_server`` and
``agent_client`` (see :mod:`trio_agent.testing.fixtures`). They need pytest-trio:
``pip install 'trio-agent[testing]'``. docs/testing.md has the whole story.
"""

from trio_agent.testing.conformance import (
    AGENT_RULES,
    GUARANTEES,
    SCENARIOS,
    AgentCheckFailed,
    AgentCheckReport,
    Finding,
    check_agent,
)
from trio_agent.testing.fixtures import (
    agent_client,
    agent_server,
    agent_server_agents,
    agent_server_config,
    agent_transport,
)

__all__ = [
    "AGENT_RULES",
    "GUARANTEES",
    "SCENARIOS",
    "AgentCheckFailed",
    "AgentCheckReport",
    "Finding",
    "agent_client",
    "agent_server",
    "agent_server_agents",
    "agent_server_config",
    "agent_transport",
    "check_agent",
]
