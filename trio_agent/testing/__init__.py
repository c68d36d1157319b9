"""Test your own agent against the protocol's guarantees: a pytest plugin and a checker.

``await check_agent(MyAgent())``; and, registered as a pytest plugin (``pytest11``), the
fixtures ``agent_server`` and ``agent_client`` (they need ``trio-agent[testing]``), and
``agent_cluster`` (redis-server and haproxy installed).
docs/testing.md has the whole story.
"""

from trio_agent.testing.conformance import check_agent
from trio_agent.testing.fixtures import (
    agent_client,
    agent_cluster,
    agent_server,
    agent_server_agents,
    agent_server_config,
    agent_transport,
)
from trio_agent.testing.rules import (
    AGENT_RULES,
    GUARANTEES,
    REMOTE_SCENARIOS,
    SCENARIOS,
    AgentCheckFailed,
    AgentCheckReport,
    Finding,
)

__all__ = [
    "AGENT_RULES",
    "GUARANTEES",
    "REMOTE_SCENARIOS",
    "SCENARIOS",
    "AgentCheckFailed",
    "AgentCheckReport",
    "Finding",
    "agent_client",
    "agent_cluster",
    "agent_server",
    "agent_server_agents",
    "agent_server_config",
    "agent_transport",
    "check_agent",
]
