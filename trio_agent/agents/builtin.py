"""The two agents that ship with the server: ``lorem`` and ``echo``.

Both pace their words on :mod:`trio_agent.agents.pacing`'s shared timers, so a
thousand sessions cost a few timers, not a thousand; ``docs/agents.md`` describes
their options.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from trio_agent.agents import pacing
from trio_agent.agents.api import Agent, AgentRequest, ResponseStream, option_number

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
    # pacing.sleep, not trio.sleep: a server pacing many replies wakes them on shared
    # timers (trio_agent/agents/pacing.py); the interval is rounded up to the millisecond.
    interval = 1.0 / words_per_s if words_per_s > 0 else 0.0
    for i, word in enumerate(words):
        if interval and i:
            await pacing.sleep(interval)
        await stream.send(word)


#: ``lorem``'s defaults. Its docstring (the description SESSION lists) and the demo
#: page's Words and Words per second fields say the same; tests hold all three together.
LOREM_WORDS = 50
LOREM_WORDS_PER_S = 20


async def lorem(request: AgentRequest, stream: ResponseStream) -> None:
    """Deterministic placeholder text (options: words=50, words_per_s=20; 0 = as fast as possible)."""
    words = int(option_number(request.options, "words", LOREM_WORDS, minimum=0, maximum=1_000_000))
    words_per_s = option_number(
        request.options, "words_per_s", LOREM_WORDS_PER_S, minimum=0, maximum=1_000_000
    )
    await _paced(lorem_deltas(words), words_per_s, stream)


async def echo(request: AgentRequest, stream: ResponseStream) -> None:
    """Streams the input back word by word (options: words_per_s=0, as fast as possible)."""
    words_per_s = option_number(request.options, "words_per_s", 0, minimum=0, maximum=1_000_000)
    parts = request.input.split()
    await _paced([(" " if i else "") + w for i, w in enumerate(parts)], words_per_s, stream)


def builtin_agents() -> dict[str, Agent]:
    """The agents ``scripts/serve`` runs with: no external service needed."""
    return {"lorem": lorem, "echo": echo}
