"""A chat conversation that remembers what the user actually heard.

Pure bookkeeping, no I/O: an assistant turn holds exactly the deltas the client
received, not what the model produced (docs/agents.md, the ``openai`` agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trio_agent.protocol.messages import DoneStatus

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message of the conversation, as the server records it."""

    role: Role
    content: str
    #: For an assistant turn: how its request ended. Anything but ``completed``
    #: means the reply was cut, and ``content`` is only what reached the client.
    status: DoneStatus | None = None

    @property
    def interrupted(self) -> bool:
        return self.status is DoneStatus.INTERRUPTED

    def message(self) -> dict[str, str]:
        """The turn as the chat completions API wants it: role and content, nothing else."""
        return {"role": self.role, "content": self.content}


class ChatHistory:
    """The turns of one dialogue, opened by an optional system prompt.

    :param system_prompt: sent as the first message of every request, if given.
    """

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt
        self.turns: list[Turn] = []

    def to_json(self) -> list[dict[str, str]]:
        """The turns as JSON (what a cluster carries to another node)."""
        return [
            {"role": t.role, "content": t.content, **({"status": t.status} if t.status else {})}
            for t in self.turns
        ]

    @classmethod
    def from_json(cls, data: object, system_prompt: str | None = None) -> ChatHistory:
        """The conversation :meth:`to_json` wrote; entries that are not turns are left out."""
        history = cls(system_prompt)
        for item in data if isinstance(data, list) else []:
            if not isinstance(item, dict):
                continue
            role, content, status = item.get("role"), item.get("content"), item.get("status")
            if role in ("user", "assistant") and isinstance(content, str):
                done = DoneStatus(status) if status in set(DoneStatus) else None
                history.turns.append(Turn(role, content, done))
        return history

    def messages_for(self, user_input: str) -> list[dict[str, str]]:
        """The ``messages`` of a request that says ``user_input`` now: the system
        prompt, every recorded turn, and the new user message. A new list each time,
        so a request that runs for a while is not affected by turns recorded meanwhile."""
        messages = [Turn("system", self.system_prompt).message()] if self.system_prompt else []
        messages += [turn.message() for turn in self.turns]
        messages.append(Turn("user", user_input).message())
        return messages

    def record(self, user_input: str, delivered: str, status: DoneStatus) -> bool:
        """Record a request that has ended: the user's input and the reply as delivered.

        A reply that was completed or interrupted is recorded even when empty, so
        user and assistant turns keep alternating (some chat templates insist). A
        request that failed, timed out or was ended by shutdown before the client
        received anything is left out, as if it had never been sent: a retry then
        does not repeat the question. Returns whether the turns were recorded.
        """
        if not delivered and status not in (DoneStatus.COMPLETED, DoneStatus.INTERRUPTED):
            return False
        self.turns.append(Turn("user", user_input))
        self.turns.append(Turn("assistant", delivered, status))
        return True
