"""The cluster's store on Redis or Valkey, through coredis (which runs on anyio, so on Trio).

:class:`RedisStore` implements :class:`~trio_agent.cluster.store.ClusterStore`;
``docs/cluster.md`` ("Keys in Redis") draws its keys. Open it with
:func:`open_redis_store`, which owns the clients' lifetime.

Two promises hold for every call, because the node relies on them:

* **It ends.** Connecting and each reply are bounded by ``timeout_s`` (1 s), and
  every call also runs under a ``trio.fail_after`` of its own, so a Redis that is
  gone, or answers nothing, costs a call at most about two seconds, never a hang.
* **It fails one way.** Whatever coredis raises (refused, reset, timed out, an
  error reply) comes out as :class:`StoreUnavailable`; nothing else leaks out. The
  same store works again once Redis is back: a broken connection is dropped from
  its pool and the next call makes a new one (the store is never reopened).

``wait_frames`` blocks in ``XREAD BLOCK``; it runs on a pool of its own (with no
reply timeout) so a blocked read never holds up the other calls, and a cancelled
one drops its connection (the read cannot be taken back) without using up a slot
of that pool: see :mod:`trio_agent.cluster.redis_client`.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn, cast

import anyio
import coredis
import trio
from coredis.exceptions import RedisError
from coredis.response.types import StreamEntry
from coredis.typing import KeyT, ValueT
from loguru import logger

from trio_agent.cluster import redis_scripts
from trio_agent.cluster.redis_client import redis_client
from trio_agent.cluster.store import (
    ClusterStore,
    ControlMessage,
    FrameWrite,
    RequestEnded,
    RequestStarted,
    SessionSeen,
    StoredFrame,
    StoreUnavailable,
    TakeOver,
    TakeOverVerdict,
    Write,
)
from trio_agent.cluster.store_codec import (
    decode_control,
    encode_control,
    pack_frames,
    unpack_frames,
)

__all__ = ["RedisStore", "open_redis_store"]

#: How long a session's keys outlive its resume window, so a RESUME that arrives
#: right at the deadline still finds a record to say UNKNOWN about.
DETACH_MARGIN_S = 5.0
#: The TTL of a claim when its request book has none (it always has one).
CLAIM_FALLBACK_TTL_S = 3600.0
#: What a store error is, whichever layer raised it.
#: What coredis raises when the server or a connection is gone (anyio's stream errors
#: escape it when a connection is torn down under a call).
STORE_ERRORS = (
    RedisError,
    TimeoutError,
    OSError,
    trio.TooSlowError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)


#: How often a session's keys have their TTL refreshed by its writes, at most.
_TOUCH_EVERY_S = 1.0
#: Sessions whose last refresh is remembered (past it, all are refreshed anew).
_TOUCHED_MEMORY = 100_000


def _reraise(
    group: BaseExceptionGroup[BaseException], store_errors: tuple[type[BaseException], ...]
) -> NoReturn:
    """Raise what a coredis task group wrapped: a group of ``store_errors`` only (at
    any depth: coredis nests task groups) as :class:`StoreUnavailable`, a lone other
    exception as itself (the body of the ``async with`` raised it), anything else as
    the group. :class:`trio.Cancelled` is left aside."""
    _, rest = group.split(trio.Cancelled)
    if rest is None:
        raise group
    if store_errors:
        broken, others = rest.split(store_errors)
        if others is None and broken is not None:
            raise StoreUnavailable(f"the store failed or is unreachable: {broken!r}") from group
    if len(rest.exceptions) != 1:
        raise group
    error = rest.exceptions[0]
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error


async def _raise_if_cancelled() -> None:
    """Raise :class:`trio.Cancelled` if the calling task is being cancelled."""
    if trio.current_effective_deadline() == -math.inf:
        await trio.lowlevel.checkpoint()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


class _SessionKeys:
    """The keys of one session; they share the hash tag ``{session_id}``."""

    __slots__ = ("claims", "cuts", "frame_bytes", "frames", "record", "requests")

    def __init__(self, prefix: str, session_id: str) -> None:
        tag = "{" + session_id + "}"
        self.record = f"{prefix}:session:{tag}"
        self.frames = f"{prefix}:frames:{tag}"
        self.requests = f"{prefix}:requests:{tag}"
        self.cuts = f"{prefix}:cuts:{tag}"
        self.claims = f"{prefix}:claims:{tag}"
        #: The bytes the stream holds (what bounds it; see ``APPEND_FRAMES``).
        self.frame_bytes = f"{prefix}:frame-bytes:{tag}"

    @property
    def all(self) -> list[str]:
        """Every key, the record first (the order the Lua scripts expect)."""
        return [
            self.record,
            self.frames,
            self.requests,
            self.cuts,
            self.claims,
            self.frame_bytes,
        ]


def _stored_frames(entry: StreamEntry) -> list[StoredFrame]:
    """The frames of one stream entry, in the order they were written."""
    # The client decodes nothing (decode_responses=False): every field is bytes.
    fields = cast(Mapping[bytes, bytes], entry.field_values)
    return unpack_frames(
        bytes(fields.get(b"f", b"")),
        entry_id=_text(entry.identifier),
        node_id=_text(fields.get(b"o")),
    )


class _ControlMessages:
    """The messages of one subscription, decoded; junk on the channel is logged and skipped."""

    def __init__(self, pubsub: Any, channel: str) -> None:
        self._pubsub = pubsub
        self._channel = channel

    def __aiter__(self) -> _ControlMessages:
        return self

    async def __anext__(self) -> ControlMessage:
        while True:
            message = await self._pubsub.__anext__()
            if message["type"] != "message":
                continue
            try:
                return decode_control(message["data"])
            except (ValueError, TypeError, KeyError) as error:
                logger.warning("skipped a malformed message on {}: {!r}", self._channel, error)


class RedisStore:
    """:class:`~trio_agent.cluster.store.ClusterStore` on Redis or Valkey.

    Made by :func:`open_redis_store`; usable from any task while that ``async with``
    is open. Every call raises :class:`StoreUnavailable` when Redis cannot be reached
    (within about ``2 * timeout_s``) and is cancellable like any Trio call.
    """

    def __init__(
        self,
        commands: coredis.Redis[bytes],
        blocking: coredis.Redis[bytes],
        *,
        prefix: str,
        timeout_s: float,
    ) -> None:
        self._redis = commands
        self._blocking = blocking
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._lease_started_ms: dict[str, int] = {}
        #: When each session's keys last had their TTL refreshed (``time.monotonic``).
        self._touched: dict[str, float] = {}
        self._take_over = commands.register_script(redis_scripts.TAKE_OVER)
        self._detach = commands.register_script(redis_scripts.DETACH)
        self._close = commands.register_script(redis_scripts.CLOSE_SESSION)
        self._claim = commands.register_script(redis_scripts.CLAIM_REQUEST)
        self._open = commands.register_script(redis_scripts.OPEN_SESSION)
        self._update = commands.register_script(redis_scripts.UPDATE_RECORD)

    # -- helpers -----------------------------------------------------------------

    def keys(self, session_id: str) -> list[str]:
        """Every key the store may hold for ``session_id`` (for tests and tools)."""
        return _SessionKeys(self._prefix, session_id).all

    def lease_key(self, node_id: str) -> str:
        """The key of ``node_id``'s lease."""
        return f"{self._prefix}:node:{node_id}"

    def control_channel(self, node_id: str) -> str:
        """The Pub/Sub channel of ``node_id``'s control messages."""
        return f"{self._prefix}:control:{node_id}"

    @asynccontextmanager
    async def _call(self, what: str, limit_s: float | None = None) -> AsyncIterator[None]:
        """Bound a call in time and turn every store error into :class:`StoreUnavailable`,
        unless the caller is being cancelled: then it is :class:`trio.Cancelled`, as for
        any cancelled call (coredis turns a connect cut by a cancellation into an error)."""
        try:
            with trio.fail_after(limit_s if limit_s is not None else 2 * self._timeout_s):
                yield
        except STORE_ERRORS as error:
            await _raise_if_cancelled()
            raise StoreUnavailable(
                f"{what}: the store failed or is unreachable ({error!r})"
            ) from error
        except BaseExceptionGroup as group:
            await _raise_if_cancelled()
            _reraise(group, STORE_ERRORS)

    # -- liveness ----------------------------------------------------------------

    async def hold_lease(self, node_id: str, lease_s: float) -> None:
        """``SET node:<id> <start ms> PX lease``: the value is when this node first held it."""
        started = self._lease_started_ms.setdefault(node_id, int(time.time() * 1000))
        async with self._call("hold_lease"):
            await self._redis.set(self.lease_key(node_id), str(started), px=_ms(lease_s))

    async def release_lease(self, node_id: str) -> None:
        """``DEL node:<id>``."""
        async with self._call("release_lease"):
            await self._redis.delete([self.lease_key(node_id)])

    async def node_alive(self, node_id: str) -> bool:
        """``EXISTS node:<id>``."""
        async with self._call("node_alive"):
            return bool(await self._redis.exists([self.lease_key(node_id)]))

    # -- control channels --------------------------------------------------------

    async def send_control(self, to_node: str, message: ControlMessage) -> None:
        """``PUBLISH control:<node> <json>`` (at most once, see the protocol)."""
        async with self._call("send_control"):
            await self._redis.publish(self.control_channel(to_node), encode_control(message))

    def control_messages(
        self, node_id: str
    ) -> AbstractAsyncContextManager[AsyncIterator[ControlMessage]]:
        """Subscribe to ``node_id``'s channel; subscribed (confirmed by Redis) once the
        ``async with`` is entered. When the connection breaks the ``async with`` ends
        with :class:`StoreUnavailable` (subscribe again: what was published meanwhile
        is lost, as Pub/Sub is). Leaving the block unsubscribes."""
        return self._control_messages(node_id)

    @asynccontextmanager
    async def _control_messages(self, node_id: str) -> AsyncIterator[AsyncIterator[ControlMessage]]:
        channel = self.control_channel(node_id)
        pubsub = self._redis.pubsub(
            channels=[channel],
            ignore_subscribe_messages=True,
            retry_policy=None,  # a broken subscription ends the block: the node resubscribes
            subscription_timeout=self._timeout_s,
            max_idle_seconds=5,
        )
        # What the subscription itself raises: coredis's errors, and the keepalive PING's
        # timeout (the body's own exceptions come out as they are).
        broken = STORE_ERRORS
        try:
            async with pubsub:
                yield _ControlMessages(pubsub, channel)
        except broken as error:
            await _raise_if_cancelled()
            raise StoreUnavailable(f"control channel {channel}: {error!r}") from error
        except BaseExceptionGroup as group:
            await _raise_if_cancelled()
            _reraise(group, broken)

    # -- sessions ----------------------------------------------------------------

    async def open_session(
        self, session_id: str, *, owner: str, token_digest: str, ttl_s: float, epoch: int = 1
    ) -> bool:
        """The ``OPEN_SESSION`` Lua script: ``DEL`` whatever an earlier session of that id
        left, ``HSET`` the record (at ``epoch``), ``PEXPIRE`` it; not when the store
        holds the session for another node (a higher epoch, or the same one owned by
        another): False then, nothing changed."""
        self._touched.pop(session_id, None)
        keys = _SessionKeys(self._prefix, session_id)
        now = str(int(time.time() * 1000))
        async with self._call("open_session"):
            done: int = await self._open(
                keys=keys.all, args=[owner, str(epoch), token_digest, now, str(_ms(ttl_s))]
            )
        return bool(done)

    async def take_over(
        self,
        session_id: str,
        *,
        token_digest: str,
        new_token_digest: str,
        node_id: str,
        max_denied: int,
    ) -> TakeOver:
        """The ``TAKE_OVER`` Lua script (atomic): check (a spent token is accepted again
        once the node that spent it is dead), then own, bump, re-key, re-TTL."""
        keys = _SessionKeys(self._prefix, session_id)
        async with self._call("take_over"):
            reply: Any = await self._take_over(
                keys=keys.all,
                args=[
                    token_digest,
                    new_token_digest,
                    node_id,
                    str(max_denied),
                    self.lease_key(""),
                ],
            )
        verdict = TakeOverVerdict(_text(reply[0]))
        if verdict is not TakeOverVerdict.OK:
            return TakeOver(verdict)
        previous, state = _text(reply[2]), _text(reply[3])
        return TakeOver(verdict, int(reply[1]), previous or None, state or None)

    async def set_token(self, session_id: str, token_digest: str) -> None:
        """``HSET digest`` on the record, if there is one (a Lua script)."""
        await self._update_record("set_token", session_id, "digest", token_digest)

    async def save_agent_state(self, session_id: str, state: str) -> None:
        """``HSET agent_state`` on the record, if there is one (a Lua script)."""
        await self._update_record("save_agent_state", session_id, "agent_state", state)

    async def _update_record(self, what: str, session_id: str, field: str, value: str) -> None:
        record = _SessionKeys(self._prefix, session_id).record
        async with self._call(what):
            await self._update(keys=[record], args=[field, value])

    async def detach(self, session_id: str, *, window_s: float, owner: str) -> bool:
        """The ``DETACH`` Lua script: ``deadline_ms`` = Redis's now + window, and every key
        of the session expires :data:`DETACH_MARGIN_S` after the deadline; only while
        ``owner`` still owns the session (False, and nothing changed, otherwise)."""
        keys = _SessionKeys(self._prefix, session_id)
        async with self._call("detach"):
            done: int = await self._detach(
                keys=keys.all, args=[str(_ms(window_s)), str(_ms(DETACH_MARGIN_S)), owner]
            )
        return bool(done)

    async def close_session(self, session_id: str, *, owner: str) -> bool:
        """``DEL`` every key of the session, only while ``owner`` owns it (the
        ``CLOSE_SESSION`` Lua script)."""
        keys = _SessionKeys(self._prefix, session_id)
        async with self._call("close_session"):
            done: int = await self._close(keys=keys.all, args=[owner])
        return bool(done)

    # -- frames and requests -----------------------------------------------------

    async def write(self, batch: Sequence[Write], *, max_bytes: int, ttl_s: float) -> None:
        """One pipeline (one round trip, not a transaction): each session's frames as one
        stream entry, every session's in one ``APPEND_FRAMES`` call (the oldest entries
        go past ``max_bytes``), the other writes in order (``HSET``/``HDEL`` on the request book and its claims); then, for every
        session the batch names and that was not refreshed in the last second (or that a
        :class:`SessionSeen` names), the ``TOUCH_SESSION`` script: ``last_seen_ms`` and
        the TTL of all its keys (they live and die together: a request book that expired
        before its stream would say nothing runs while frames still come). A command
        costs the node far more than a frame does, so a session streaming flat out is
        refreshed once a second, not once a batch."""
        if not batch:
            return
        sessions: dict[str, _SessionKeys] = {}
        now = str(int(time.time() * 1000))
        async with self._call("write"), self._redis.pipeline(transaction=False) as pipe:
            #: Each session's frames not yet appended, by node: one entry each, in order.
            pending: dict[str, dict[str, list[FrameWrite]]] = {}

            def append_pending() -> None:
                """Every session's pending frames, in one ``APPEND_FRAMES`` call."""
                script_keys: list[KeyT] = []
                script_args: list[ValueT] = [str(max_bytes), str(_ms(ttl_s))]
                for session_id, by_node in pending.items():
                    session = sessions[session_id]
                    for node_id, frames in by_node.items():
                        script_keys += (session.frames, session.frame_bytes)
                        script_args += (node_id.encode(), pack_frames(frames))
                pending.clear()
                if script_keys:
                    pipe.eval(redis_scripts.APPEND_FRAMES, script_keys, script_args)

            for item in batch:
                keys = sessions.get(item.session_id)
                if keys is None:
                    keys = sessions[item.session_id] = _SessionKeys(self._prefix, item.session_id)
                if isinstance(item, FrameWrite):
                    # (get, not setdefault: no empty dict and list made per frame.)
                    by_node = pending.get(item.session_id)
                    if by_node is None:
                        by_node = pending[item.session_id] = {}
                    frames = by_node.get(item.node_id)
                    if frames is None:
                        by_node[item.node_id] = [item]
                    else:
                        frames.append(item)
                    continue
                # The session's frames before this write go first (its order is kept).
                if item.session_id in pending:
                    append_pending()
                if isinstance(item, RequestStarted):
                    pipe.hset(keys.requests, {item.request_id: item.node_id})
                    pipe.hdel(keys.claims, [item.request_id])
                elif isinstance(item, RequestEnded):
                    pipe.hdel(keys.requests, [item.request_id])
                    pipe.hdel(keys.claims, [item.request_id])
                else:
                    assert isinstance(item, SessionSeen)
            append_pending()
            clock = time.monotonic()
            seen = {item.session_id for item in batch if isinstance(item, SessionSeen)}
            if len(self._touched) > _TOUCHED_MEMORY:
                self._touched.clear()
            for session_id, keys in sessions.items():
                last = self._touched.get(session_id)
                if session_id in seen or last is None or clock - last >= _TOUCH_EVERY_S:
                    self._touched[session_id] = clock
                    pipe.eval(redis_scripts.TOUCH_SESSION, keys.all, [now, str(_ms(ttl_s))])

    async def read_frames(self, session_id: str, after: str = "0") -> list[StoredFrame]:
        """``XRANGE frames (<after> +``: oldest first."""
        frames = _SessionKeys(self._prefix, session_id).frames
        async with self._call("read_frames"):
            entries = await self._redis.xrange(frames, start=f"({after}", end="+")
        return [frame for entry in entries for frame in _stored_frames(entry)]

    async def wait_frames(
        self, session_id: str, after: str, *, timeout_s: float
    ) -> list[StoredFrame]:
        """``XREAD BLOCK <timeout> STREAMS frames <after>`` on the blocking pool. Cancelled,
        its connection is closed (Redis forgets the read) and its slot given back; a dead
        server ends it with :class:`StoreUnavailable` at once (the connection breaks), a
        silent one after ``timeout_s`` plus the call's bound."""
        if timeout_s <= 0:  # BLOCK 0 would wait forever
            return await self.read_frames(session_id, after)
        frames = _SessionKeys(self._prefix, session_id).frames
        async with self._call("wait_frames", limit_s=timeout_s + 2 * self._timeout_s):
            reply = await self._blocking.xread({frames: after}, block=_ms(timeout_s))
        if not reply:
            return []
        return [
            frame
            for entries in reply.values()
            for entry in entries
            for frame in _stored_frames(entry)
        ]

    async def running_requests(self, session_id: str) -> dict[str, str]:
        """``HGETALL requests``: request id -> node."""
        requests = _SessionKeys(self._prefix, session_id).requests
        async with self._call("running_requests"):
            book = await self._redis.hgetall(requests)
        return {_text(request): _text(node) for request, node in book.items()}

    async def read_session(self, session_id: str) -> tuple[list[StoredFrame], dict[str, str]]:
        """``XRANGE frames - +`` and ``HGETALL requests`` in one pipeline (one round trip;
        Redis runs them in this order, as :meth:`read_frames` then
        :meth:`running_requests` would)."""
        keys = _SessionKeys(self._prefix, session_id)
        async with self._call("read_session"):
            async with self._redis.pipeline(transaction=False) as pipe:
                entries_read = pipe.xrange(keys.frames, start="-", end="+")
                book_read = pipe.hgetall(keys.requests)
            entries, book = await entries_read, await book_read
        frames = [frame for entry in entries for frame in _stored_frames(entry)]
        return frames, {_text(request): _text(node) for request, node in book.items()}

    async def claim_request(
        self, session_id: str, request_id: str, *, dead_node: str, claimer: str
    ) -> bool:
        """The ``CLAIM_REQUEST`` Lua script: when the book says ``dead_node`` runs it and
        no live node holds its claim, ``HSET claims <request> <claimer>``; of the callers
        that find it so, the first wins. The book keeps the request (it has no DONE yet)
        until the winner's ``RequestEnded``."""
        self._touched.pop(session_id, None)
        keys = _SessionKeys(self._prefix, session_id)
        async with self._call("claim_request"):
            won: Any = await self._claim(
                keys=[keys.requests, keys.claims],
                args=[
                    request_id,
                    dead_node,
                    str(_ms(CLAIM_FALLBACK_TTL_S)),
                    claimer,
                    self.lease_key(""),
                ],
            )
        return bool(won)

    async def record_cut(
        self, session_id: str, request_id: str, msg_id: str, *, ttl_s: float
    ) -> None:
        """``HSET cuts <request> <msg_id>`` and ``PEXPIRE``, in one pipeline."""
        cuts = _SessionKeys(self._prefix, session_id).cuts
        async with self._call("record_cut"), self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(cuts, {request_id: msg_id})
            pipe.pexpire(cuts, _ms(ttl_s))

    async def cuts(self, session_id: str) -> dict[str, str]:
        """``HGETALL cuts``: request id -> INTERRUPT msg_id."""
        cuts = _SessionKeys(self._prefix, session_id).cuts
        async with self._call("cuts"):
            recorded = await self._redis.hgetall(cuts)
        return {_text(request): _text(msg_id) for request, msg_id in recorded.items()}

    async def session_owner(self, session_id: str) -> tuple[str, int] | None:
        """``HMGET record owner epoch``: who holds the session now, at which epoch."""
        record = _SessionKeys(self._prefix, session_id).record
        async with self._call("session_owner"):
            owner, epoch = await self._redis.hmget(record, ["owner", "epoch"])
        if owner is None or epoch is None:
            return None
        return _text(owner), int(epoch)


@asynccontextmanager
async def open_redis_store(
    url: str,
    *,
    prefix: str = "trio-agent",
    timeout_s: float = 1.0,
    max_waiters: int = 256,
) -> AsyncIterator[RedisStore]:
    """A :class:`RedisStore` on ``url`` (``redis://``, ``rediss://`` or ``unix://``) for the
    ``async with`` block; its connections close when the block ends.

    Nothing is connected until the first call, so opening never fails for a Redis
    that is down (the calls do, with :class:`StoreUnavailable`). ``timeout_s`` bounds
    connecting and each reply; ``max_waiters`` is how many ``wait_frames`` may block
    at once (each holds a connection while it waits; one more waits for a slot, up
    to ``2 * timeout_s``). Keys are named ``<prefix>:...``.
    """
    commands = redis_client(url, timeout_s=timeout_s, reply_timeout_s=timeout_s, size=64)
    blocking = redis_client(url, timeout_s=timeout_s, reply_timeout_s=None, size=max_waiters)
    async with _entered(commands), _entered(blocking):
        yield RedisStore(commands, blocking, prefix=prefix, timeout_s=timeout_s)


@asynccontextmanager
async def _entered(client: coredis.Redis[bytes]) -> AsyncIterator[None]:
    """``async with client``, handing back what the body raised as it is: coredis's
    pool runs a task group around the body, which wraps it in an exception group."""
    try:
        async with client:
            yield
    except BaseExceptionGroup as group:
        _reraise(group, ())


def _implements_the_protocol(store: RedisStore) -> ClusterStore:
    """Never called: mypy checks here that :class:`RedisStore` is a ``ClusterStore``."""
    return store
