"""What ``trio-agent chat`` says about itself and the server: its commands and keys
(``/help`` and ``chat --help`` show the same list), and the agents, each with whether
it can be asked and, when it cannot, why (the SESSION frame says both).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from trio_agent.protocol.messages import AgentEntry

__all__ = [
    "CHAT_DESCRIPTION",
    "CHAT_EPILOG",
    "COMMANDS",
    "HELP",
    "agent_problem",
    "choose_agent",
    "describe_agents",
]

#: The first note of a chat.
HELP: Final = (
    "type a line to ask; a new line while a reply streams interrupts it. "
    "/help lists the commands, /quit leaves"
)

#: ``/help``: one line a command, then the keys.
COMMANDS: Final = (
    "  /agent [NAME]    list the agents (and why one is unavailable), or switch to NAME",
    "  /voice [on|off]  say how replies are spoken; speak them, or stop speaking them",
    "  /stop            stop the reply without asking anything",
    "  /help            list these commands",
    "  /quit            leave",
    "keys on a terminal:",
    "  Enter            ask; while a reply streams, cut it and ask at once",
    "  Esc              stop the reply (as /stop), keeping what you are typing",
    "  Up, Down         go through what you typed before",
    "  Ctrl-C           leave at once (Ctrl-D on an empty line too)",
)

CHAT_DESCRIPTION: Final = """\
Chat with a trio-agent server from the terminal.

Each line you type is a question; a new line while a reply streams interrupts
it (INTERRUPT) and asks at once, without waiting for the server's ACK. The cut
reply ends with [cut after N chunks], and a note gives the ACK's round trip.

On a terminal the input line stays at the bottom, with its prompt, while the
replies stream above it. From a pipe or a file the lines are read as they come
and echoed (> line), so the transcript shows the questions; the chat ends at
the end of the input, after the last reply."""

CHAT_EPILOG: Final = (
    "commands (type them as a line):\n"
    + "\n".join(COMMANDS)
    + "\n\nexit status: 0 when you leave (/quit, Ctrl-C, end of input); 1 when the\n"
    "connection fails or is lost (or the terminal's prompt cannot run); 2 for a bad\n"
    "flag, or an agent or voice the server does not offer or cannot run."
)


def describe_agents(agents: Mapping[str, AgentEntry]) -> str:
    """``agents: lorem, echo; openai unavailable: <reason>`` (the ones that can be
    asked, then each one that cannot, with its reason)."""
    available = [name for name, entry in agents.items() if entry.available]
    text = f"agents: {', '.join(available) or 'none available'}"
    for name, entry in agents.items():
        if not entry.available:
            text += f"; {name} unavailable: {entry.unavailable_reason or 'no reason given'}"
    return text


def agent_problem(agents: Mapping[str, AgentEntry], name: str) -> str | None:
    """Why ``name`` cannot be asked, or ``None`` if it can."""
    entry = agents.get(name)
    if entry is None:
        return f"no agent {name!r} here ({describe_agents(agents)})"
    if not entry.available:
        available = [other for other, entry in agents.items() if entry.available]
        return (
            f"agent {name!r} is unavailable: {entry.unavailable_reason or 'no reason given'}"
            f" (agents: {', '.join(available) or 'none available'})"
        )
    return None


def choose_agent(
    agents: Mapping[str, AgentEntry], asked: str | None, default: str | None
) -> tuple[str | None, str | None]:
    """The agent the chat starts with, and why there is none.

    The one ``asked`` for must be available. Without one, the server's default, or
    when that one is unavailable the first that is available.
    """
    if asked is not None:
        problem = agent_problem(agents, asked)
        return (None, problem) if problem is not None else (asked, None)
    usable = [name for name, entry in agents.items() if entry.available]
    if default is not None and default in usable:
        return default, None
    if usable:
        return usable[0], None
    return None, f"no agent here can be asked ({describe_agents(agents)})"
