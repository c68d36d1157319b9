"""What an agent keeps for a session, carried to another node of a cluster.

An agent may keep state in ``AgentRequest.session_state`` (the ``openai`` agent
keeps its conversation there). In a cluster a session can be resumed on another
node, and its next REQUEST should continue where it was: an agent whose state is
worth carrying defines two optional methods,

- ``export_session_state(session_state) -> JSON-able | None``: what to carry,
  called on the node that runs a request, each time one ends;
- ``restore_session_state(session_state, data) -> None``: put it back, on the node
  that takes the session over.

Agents without them keep nothing across nodes (``docs/cluster.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from typing import Any

from trio_agent.agents.api import Agent

__all__ = ["export_session_states", "restore_session_states"]


def export_session_states(
    agents: Mapping[str, Agent], session_state: MutableMapping[object, Any]
) -> str | None:
    """The portable state of every agent that has some, as one JSON text (``None``: none)."""
    kept: dict[str, Any] = {}
    for name, agent in agents.items():
        export = getattr(agent, "export_session_state", None)
        if callable(export) and (data := export(session_state)) is not None:
            kept[name] = data
    return json.dumps(kept, separators=(",", ":")) if kept else None


def restore_session_states(
    agents: Mapping[str, Agent], session_state: MutableMapping[object, Any], text: str
) -> None:
    """Give each agent its part of :func:`export_session_states`'s text (bad text: nothing)."""
    try:
        kept = json.loads(text)
    except ValueError:
        return
    if not isinstance(kept, dict):
        return
    for name, data in kept.items():
        restore = getattr(agents.get(name), "restore_session_state", None)
        if callable(restore):
            restore(session_state, data)
