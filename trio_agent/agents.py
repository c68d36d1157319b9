"""What an agent is, and the two agents that ship with the server.

An agent is any async callable ``agent(request, stream)``. It reads
:class:`AgentRequest` and streams its reply with ``await stream.send(delta)``.
That is the whole contract, and it is the same for a toy and for an LLM client.

Cancellation is not the agent's business to poll: the server runs each request in
its own :class:`trio.CancelScope`, and an INTERRUPT, a timeout, a disconnect or a
shutdown cancels that scope. The agent sees :class:`trio.Cancelled` at its next
checkpoint (``stream.send`` is one) and should simply let it propagate, after any
cleanup it needs (bounded: ``with trio.move_on_after(t, shield=True): ...``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

from .protocol import ErrorCode


@dataclass(frozen=True)
class AgentRequest:
    """One REQUEST as an agent sees it."""

    request_id: str
    input: str
    options: Mapping[str, Any] = field(default_factory=dict)
    session_id: str = ""


class ResponseStream(Protocol):
    """Where an agent sends its reply."""

    @property
    def request_id(self) -> str: ...

    async def send(self, delta: str) -> None:
        """Queue one delta as a STREAM frame.

        Waits while the connection's stream lane is full (backpressure). Always a
        checkpoint, so an interrupt of this request raises :class:`trio.Cancelled`
        here. Raises :class:`trio.ClosedResourceError` if the request has already
        ended (a cancelled agent that keeps sending from a shielded block).
        """
        ...


@runtime_checkable
class Agent(Protocol):
    """An async callable that streams a reply into a :class:`ResponseStream`."""

    async def __call__(self, request: AgentRequest, stream: ResponseStream) -> None: ...


class AgentError(Exception):
    """Raise from an agent to end its request with ``DONE{status: failed, error}``.

    ``code`` and ``message`` go to the client as they are, so keep them free of
    secrets. Any other exception ends the request the same way with the code
    ``AGENT_ERROR`` and only the exception's type and message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def describe(agent: Agent) -> str:
    """A one-line description: the agent's ``description`` attribute or docstring."""
    text = getattr(agent, "description", None) or (agent.__doc__ or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def _option_number(
    options: Mapping[str, Any], name: str, default: float, *, minimum: float, maximum: float
) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise AgentError(str(ErrorCode.INVALID_MESSAGE), f"options.{name} must be a number")
    if not minimum <= value <= maximum:
        raise AgentError(
            str(ErrorCode.INVALID_MESSAGE),
            f"options.{name} must be between {minimum} and {maximum}",
        )
    return float(value)


_LOREM = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "ut",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "ut",
    "aliquip",
    "ex",
    "ea",
    "commodo",
    "consequat",
    "duis",
    "aute",
    "irure",
    "dolor",
    "in",
    "reprehenderit",
    "in",
    "voluptate",
    "velit",
    "esse",
    "cillum",
    "dolore",
    "eu",
    "fugiat",
    "nulla",
    "pariatur",
    "excepteur",
    "sint",
    "occaecat",
    "cupidatat",
    "non",
    "proident",
    "sunt",
    "in",
    "culpa",
    "qui",
    "officia",
    "deserunt",
    "mollit",
    "anim",
    "id",
    "est",
    "laborum",
]


def lorem_deltas(count: int) -> Iterator[str]:
    """The deltas ``lorem`` sends, made one at a time: a request for a million words
    must not stop the event loop to build a million strings before its first send."""
    return ((" " if i else "") + _LOREM[i % len(_LOREM)] for i in range(count))


def lorem_words(count: int) -> list[str]:
    """The first ``count`` deltas ``lorem`` sends: deterministic, word by word."""
    return list(lorem_deltas(count))


async def _paced(words: Iterable[str], words_per_s: float, stream: ResponseStream) -> None:
    interval = 1.0 / words_per_s if words_per_s > 0 else 0.0
    for i, word in enumerate(words):
        if interval and i:
            await trio.sleep(interval)
        await stream.send(word)


async def lorem(request: AgentRequest, stream: ResponseStream) -> None:
    """Deterministic placeholder text (options: words=50, words_per_s=20; 0 = as fast as possible)."""
    words = int(_option_number(request.options, "words", 50, minimum=0, maximum=1_000_000))
    words_per_s = _option_number(request.options, "words_per_s", 20, minimum=0, maximum=1_000_000)
    await _paced(lorem_deltas(words), words_per_s, stream)


async def echo(request: AgentRequest, stream: ResponseStream) -> None:
    """Streams the input back word by word (options: words_per_s=0, as fast as possible)."""
    words_per_s = _option_number(request.options, "words_per_s", 0, minimum=0, maximum=1_000_000)
    parts = request.input.split()
    await _paced([(" " if i else "") + w for i, w in enumerate(parts)], words_per_s, stream)


def builtin_agents() -> dict[str, Agent]:
    """The agents ``scripts/serve`` runs with: no external service needed."""
    return {"lorem": lorem, "echo": echo}
