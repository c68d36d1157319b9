"""The ``msg_id`` of every frame a session sends: ``s0``, ``s1``, ... in the order built.

One :class:`MessageIds` per session, shared by everything that builds its frames
(the reader's control frames, the agent's STREAM frames, the writer's DONEs), so
the ids of a session never repeat. ``docs/protocol.md`` describes ``msg_id``.
"""

from __future__ import annotations

import itertools


class MessageIds:
    """Hands out a session's message ids. Synchronous: never a checkpoint."""

    __slots__ = ("_count", "_prefix")

    def __init__(self, prefix: str = "") -> None:
        self._count = itertools.count()
        #: Before the ``s``: in a cluster, a session taken over by another node
        #: numbers its frames anew under its new epoch (``2-s0``, ...), so no id
        #: repeats one the earlier node sent.
        self._prefix = f"{prefix}s"

    def next_id(self) -> str:
        """A ``msg_id`` no other frame of this session has."""
        return f"{self._prefix}{next(self._count)}"
