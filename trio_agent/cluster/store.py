"""What a node keeps in the shared store, and the calls that keep it there.

Pure: data classes and a :class:`ClusterStore` protocol, no I/O. The one
implementation is :class:`~trio_agent.cluster.redis_store.RedisStore` (Redis or
Valkey through coredis); the layout of its keys is in ``docs/cluster.md``.

Every call may raise :class:`StoreUnavailable` when the store cannot be reached;
none of them is ever awaited by a session's reader or writer (the node runs them
in its own tasks, see :mod:`trio_agent.cluster.node`), so a slow or absent store
delays resumption across nodes, never a reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol

__all__ = [
    "ClusterStore",
    "ControlMessage",
    "FrameWrite",
    "RequestEnded",
    "RequestStarted",
    "SessionSeen",
    "StoreUnavailable",
    "StoredFrame",
    "StoredSort",
    "TakeOver",
    "TakeOverVerdict",
    "Write",
]


class StoreUnavailable(Exception):
    """The store could not be reached (or answered with an error): try again later."""


class StoredSort(Enum):
    """What a frame in a session's stream is: a STREAM or AUDIO frame of a request, or its DONE."""

    STREAM = "s"
    AUDIO = "a"
    DONE = "d"


@dataclass(slots=True)
class FrameWrite:
    """Append one written frame to its session's stream (``XADD ... MAXLEN ~``).

    ``seq`` is the frame's ``seq`` (-1 for a DONE); ``frames`` is a DONE's
    ``payload.frames`` (-1 otherwise): a DONE cuts its request at that count, so a
    replay never sends a STREAM frame the DONE did not count.

    Not frozen, though nothing changes it once made: one is made per frame a
    mirrored node writes, and a frozen dataclass's ``__init__`` (``object.__setattr__``
    per field) costs four times as much, about 2 us a frame.
    """

    session_id: str
    request_id: str
    sort: StoredSort
    seq: int
    data: str | bytes
    node_id: str
    frames: int = -1


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """``request_id`` of ``session_id`` now runs on ``node_id`` (until its DONE is stored)."""

    session_id: str
    request_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """``request_id``'s DONE has been stored: no node runs it any more."""

    session_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class SessionSeen:
    """The session is alive: refresh ``last_seen`` and the TTL of all its keys."""

    session_id: str


#: One write of a batch; a batch is applied in order, in one round trip (a pipeline).
Write = FrameWrite | RequestStarted | RequestEnded | SessionSeen


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """A frame read back from a session's stream; ``entry_id`` is its stream id."""

    entry_id: str
    request_id: str
    sort: StoredSort
    seq: int
    data: str | bytes
    node_id: str
    frames: int = -1


class TakeOverVerdict(Enum):
    """What a RESUME's token is worth, decided by the store (atomically)."""

    OK = "ok"
    #: No such session in the store, or its window has passed (``RESUME_UNKNOWN``).
    UNKNOWN = "unknown"
    #: A wrong or already spent token, or too many of them (``RESUME_DENIED``).
    DENIED = "denied"
    #: The token the last take-over spent, and the node that spent it still holds its
    #: lease: the client's RESUME won elsewhere, or that node was just killed before its
    #: RESUMED reached the client (then, once its lease is gone, the token is accepted
    #: again). ``docs/cluster.md``, "A node dies".
    SPENT = "spent"


@dataclass(frozen=True, slots=True)
class TakeOver:
    """The store's answer to a RESUME. On ``OK`` the session is this node's now:
    ``epoch`` is its new epoch, ``previous_owner`` the node that held it, and
    ``agent_state`` what its agents kept (``None``: nothing)."""

    verdict: TakeOverVerdict
    epoch: int = 0
    previous_owner: str | None = None
    agent_state: str | None = None


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """A message on a node's control channel.

    ``kind``: ``"interrupt"`` (cut ``request_ids`` of ``session_id``: INTERRUPT
    ``msg_id`` was read on the node that serves the session's connection now),
    ``"moved"`` (``session_id`` was resumed on ``from_node``, epoch ``epoch``: stop
    serving its connection here, and answer ``"flushed"``), or ``"flushed"``
    (everything ``from_node`` wrote of ``session_id`` before it read ``"moved"`` is
    in the store now).
    """

    kind: Literal["interrupt", "moved", "flushed"]
    session_id: str
    from_node: str
    msg_id: str = ""
    request_ids: tuple[str, ...] = ()
    reason: str = ""
    epoch: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)


class ClusterStore(Protocol):
    """The calls a node makes on the shared store. All are atomic where they say so,
    and each raises :class:`StoreUnavailable` when the store cannot be reached."""

    # -- liveness ----------------------------------------------------------------

    async def hold_lease(self, node_id: str, lease_s: float) -> None:
        """Set (or refresh) ``node_id``'s lease: the node is alive for ``lease_s`` more."""
        ...

    async def release_lease(self, node_id: str) -> None:
        """The node stops: its lease goes now rather than when it expires."""
        ...

    async def node_alive(self, node_id: str) -> bool:
        """Whether ``node_id`` holds a lease."""
        ...

    # -- control channels --------------------------------------------------------

    async def send_control(self, to_node: str, message: ControlMessage) -> None:
        """Publish ``message`` on ``to_node``'s control channel (at most once: a
        message published while that node is not subscribed is lost, so whatever
        must not be lost is also written durably, e.g. :meth:`record_cut`)."""
        ...

    def control_messages(
        self, node_id: str
    ) -> AbstractAsyncContextManager[AsyncIterator[ControlMessage]]:
        """Subscribe to ``node_id``'s control channel: ``async with store.control_messages(n)
        as messages: async for message in messages: ...``. Subscribed once the
        ``async with`` is entered."""
        ...

    # -- sessions ----------------------------------------------------------------

    async def open_session(
        self, session_id: str, *, owner: str, token_digest: str, ttl_s: float, epoch: int = 1
    ) -> bool:
        """Create the session's record (owner, epoch, token digest, created, last seen),
        replacing whatever the store held of that id (a node that writes a session
        anew after the store lost it keeps its epoch); atomically, not when the store
        holds the session for another node (at a higher epoch, or at ``epoch`` owned by
        another: it took the session over meanwhile): ``False`` then, nothing changed."""
        ...

    async def take_over(
        self,
        session_id: str,
        *,
        token_digest: str,
        new_token_digest: str,
        node_id: str,
        max_denied: int,
    ) -> TakeOver:
        """Atomically check a RESUME's token and, when it is the session's current one,
        make ``node_id`` the owner, bump the epoch, store ``new_token_digest`` and
        clear the window's deadline. Of two racing calls with the same token exactly
        one gets ``OK``. A session past ``max_denied`` wrong tokens denies every RESUME.
        A session whose deadline has passed is ``UNKNOWN``. The token the last
        take-over spent is ``SPENT`` while the node that spent it (the owner) holds
        its lease, and accepted again (``OK``) once it does not."""
        ...

    async def set_token(self, session_id: str, token_digest: str) -> None:
        """Store the session's current token digest (after a resume on the same node)."""
        ...

    async def detach(self, session_id: str, *, window_s: float, owner: str) -> bool:
        """The session's connection dropped: it may be resumed for ``window_s`` more.

        Only while ``owner`` still owns it: a detach that lands after another node
        took the session over changes nothing and returns False.
        """
        ...

    async def close_session(self, session_id: str, *, owner: str) -> bool:
        """The session has ended: delete its record, stream and request book.

        Only while ``owner`` still owns it (or no record names an owner): a close
        that lands after another node took the session over changes nothing and
        returns False.
        """
        ...

    async def save_agent_state(self, session_id: str, state: str) -> None:
        """Store what the session's agents keep (JSON), for a node that takes it over."""
        ...

    # -- frames and requests -----------------------------------------------------

    async def write(self, batch: Sequence[Write], *, max_bytes: int, ttl_s: float) -> None:
        """Apply ``batch`` in order in one round trip: frames appended to their
        session's stream (its oldest frames deleted past ``max_bytes``), requests marked
        running or ended, sessions refreshed; every key it touches gets ``ttl_s``."""
        ...

    async def read_frames(self, session_id: str, after: str = "0") -> list[StoredFrame]:
        """The frames of the session's stream after stream id ``after``, oldest first."""
        ...

    async def wait_frames(
        self, session_id: str, after: str, *, timeout_s: float
    ) -> list[StoredFrame]:
        """Frames after ``after``, waiting up to ``timeout_s`` for the first (``XREAD BLOCK``);
        ``[]`` when none came. Cancellable (the connection it used is dropped)."""
        ...

    async def running_requests(self, session_id: str) -> dict[str, str]:
        """The session's requests whose DONE is not stored, and the node running each."""
        ...

    async def read_session(self, session_id: str) -> tuple[list[StoredFrame], dict[str, str]]:
        """:meth:`read_frames` then :meth:`running_requests`, in that order, in one round
        trip: what a takeover reads once the previous owner has flushed, while the
        client waits for RESUMED."""
        ...

    async def claim_request(
        self, session_id: str, request_id: str, *, dead_node: str, claimer: str
    ) -> bool:
        """Atomically take over ending ``request_id``, which ran on ``dead_node``: ``True``
        for exactly one caller, and only while the store still says it runs on
        ``dead_node``; the winner, ``claimer`` (the calling node), then stores its DONE
        (NODE_LOST). The claim names its claimer: should that one die before its DONE
        is stored, the claim is won again by the next caller once the claimer's lease
        is gone (a live claimer keeps it)."""
        ...

    async def record_cut(
        self, session_id: str, request_id: str, msg_id: str, *, ttl_s: float
    ) -> None:
        """Durably record that INTERRUPT ``msg_id`` cut ``request_id`` (the running node
        checks these, so a control message lost in a reconnect is not an interrupt lost)."""
        ...

    async def cuts(self, session_id: str) -> dict[str, str]:
        """The recorded cuts of the session: request id -> INTERRUPT msg_id."""
        ...

    async def session_owner(self, session_id: str) -> tuple[str, int] | None:
        """The node that holds the session now and its epoch (``None``: no record).
        A node checks it for its detached sessions: a "moved" message published while
        it was not subscribed is lost, the record is not."""
        ...
