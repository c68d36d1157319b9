"""A node of a cluster: one server process, its lease, its control channel, its mirror.

:class:`ClusterNode` is what a server becomes with ``--redis-url``. It is the
server's :class:`~trio_agent.server.cluster_link.ClusterLink`: sessions tell it
what they write (queued for the store, never awaited by a reader or a writer),
and it decides every RESUME through the store, so that a session can be resumed
on any node and of two racing RESUMEs exactly one wins. Its tasks, in its own
nursery beside the server's:

- the lease: ``node_lease_s``, refreshed every third of it; a node whose lease is
  gone is dead, and its requests end with ``DONE{NODE_LOST}``;
- the control channel: INTERRUPTs read on another node for requests running
  here, and the news that a session was resumed elsewhere;
- the mirror (:mod:`trio_agent.cluster.mirror`).

What lives where and what each failure loses: ``docs/cluster.md``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from loguru import logger
from trio_websocket import WebSocketConnection

from trio_agent.agents import restore_session_states
from trio_agent.cluster.mirror import Mirror
from trio_agent.cluster.opening import Openings
from trio_agent.cluster.refusal import refuse_in_cluster
from trio_agent.cluster.relay import Relay, settle_requests_elsewhere
from trio_agent.cluster.resync import rewrite_held_sessions
from trio_agent.cluster.spent_token import take_over_waiting_for_spender
from trio_agent.cluster.store import (
    ClusterStore,
    ControlMessage,
    FrameWrite,
    RequestEnded,
    RequestStarted,
    SessionSeen,
    StoredSort,
    StoreUnavailable,
    TakeOverVerdict,
)
from trio_agent.cluster.stream_replay import STORED_SORT, restore_stream
from trio_agent.protocol.messages import ResumeMessage
from trio_agent.server.connection import HandOver
from trio_agent.server.replay import FrameSort
from trio_agent.server.resume_book import MAX_DENIED_PER_SESSION, Redeemed, new_token, token_digest

if TYPE_CHECKING:
    from trio_agent.server.agent_server import AgentServer
    from trio_agent.server.registry import RequestRecord
    from trio_agent.server.session import Session

__all__ = ["ClusterNode", "default_node_id"]

#: Writes waiting for the store before sessions are lost to the cluster.
MAX_QUEUED = 50_000
_RETRY_S = 0.5
#: The longest a takeover waits for a live previous owner's "flushed".
FLUSH_WAIT_MAX_S = 10.0


def default_node_id() -> str:
    """``<host>-<pid>-<random>``: unique across restarts of one host."""
    host = socket.gethostname().split(".")[0][:32] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class ClusterNode:
    """This server as a node of a cluster on ``store``.

    :param server: the server; ``server.cluster`` is set to this node.
    :param store: the shared store (:class:`~trio_agent.cluster.redis_store.RedisStore`).
    :param node_id: this node's name (``config.node_id``, or :func:`default_node_id`).

    ``await nursery.start(node.run)`` before the server runs; cancel it after.
    """

    def __init__(self, server: AgentServer, store: ClusterStore, node_id: str = "") -> None:
        config = server.config
        self.node_id = node_id or config.node_id or default_node_id()
        self._server = server
        self._store = store
        self._config = config
        self._lease_s = config.node_lease_s
        #: The time to live of a session's keys; refreshed while it is attached.
        self._ttl_s = max(60.0, 4 * config.resume_window_s)
        self._problem: str | None = None
        #: Set (and replaced) whenever :attr:`problem` comes or goes.
        self.problem_changed = trio.Event()
        self.mirror = Mirror(
            store,
            node_id=self.node_id,
            max_queued=MAX_QUEUED,
            max_bytes=config.resume_buffer_kib * 1024,
            ttl_s=self._ttl_s,
            on_trouble=self._mirror_trouble,
        )
        #: Set to have the lease task refresh at once rather than at its next third.
        #: An event, not a cancelled scope: a wish made while the task is busy
        #: refreshing is kept for its next wait instead of cancelling nothing.
        self._lease_wanted = trio.Event()
        self._control_out: list[Callable[[], Awaitable[None]]] = []
        self._control_waiting = trio.Event()
        #: Each held session's epoch (1 when opened here).
        self._epochs: dict[str, int] = {}
        #: Sessions opened here whose record is not stored yet (``opening.py``).
        self._openings = Openings()
        #: Takeovers waiting for the previous owner's "flushed", by (session, epoch).
        self._flushes: dict[tuple[str, int], trio.Event] = {}
        self.counts = dict.fromkeys(
            (
                "resumes_local_total",
                "resumes_remote_total",
                "resumes_refused_total",
                "interrupts_sent_total",
                "interrupts_received_total",
                "node_lost_claims_total",
                "store_errors_total",
            ),
            0,
        )
        server.cluster = self
        server.metrics.add_cluster(self.stats)

    # ------------------------------------------------------------------ state

    @property
    def problem(self) -> str | None:
        return self._problem

    def _trouble(self, problem: str | None) -> None:
        if problem is not None and self._problem is None:
            logger.warning("store unreachable: resume across nodes is unavailable", error=problem)
        elif problem is None and self._problem is not None:
            logger.info("store reachable again: writing the held sessions anew")
            rewrite_held_sessions(
                self.mirror,
                self._held(),
                self._store,
                book=self._server.resume_book,
                node_id=self.node_id,
                epochs=self._epochs,
                ttl_s=self._ttl_s,
            )
        if problem is not None:
            self.counts["store_errors_total"] += 1
            self._openings.settle_all()
            problem = f"store unreachable ({problem[:200]})"
        if (problem is None) != (self._problem is None):
            self.problem_changed.set()
            self.problem_changed = trio.Event()
        self._problem = problem

    def _mirror_trouble(self, problem: str | None) -> None:
        """The mirror's word on the store. A write that went through ends no problem:
        the store may have restarted empty, without this node's lease, and sessions
        written anew under no lease are a dead node's (requests claimed NODE_LOST).
        The lease task takes the lease at once; only then is the store back."""
        if problem is None and self._problem is not None:
            self._lease_wanted.set()
        else:
            self._trouble(problem)

    def stats(self) -> dict[str, float]:
        """What ``/metrics`` shows as ``trio_agent_cluster_*``."""
        return {
            **self.counts,
            "store_up": 0.0 if self._problem else 1.0,
            "mirror_queued": float(self.mirror.queued),
            "mirror_lag_seconds": self.mirror.lag_s,
            "mirror_written_total": float(self.mirror.written_total),
            "mirror_dropped_total": float(self.mirror.dropped_total),
            "sessions_lost": float(len(self.mirror.lost)),
        }

    # ------------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the lease, listen on the control channel, run the mirror; until cancelled.

        Starts once the first lease is held (or the store found unreachable: the
        node serves anyway, degraded). On the way out the lease is released
        (bounded, shielded), so the other nodes know at once that this one is gone.
        """
        logger.info("cluster node", node_id=self.node_id, lease_s=self._lease_s)
        try:
            async with trio.open_nursery() as nursery:
                await self._hold_lease_once()
                nursery.start_soon(self._keep_lease, name="cluster lease")
                nursery.start_soon(self._listen, name="cluster control")
                nursery.start_soon(self.mirror.run, name="cluster mirror")
                nursery.start_soon(self._send_control, name="cluster control out")
                task_status.started()
        finally:
            with trio.move_on_after(1.0, shield=True), contextlib.suppress(StoreUnavailable):
                await self._store.release_lease(self.node_id)

    async def flush(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until everything queued for the store is written:
        a draining node calls it before it exits, so no frame is lost with it."""
        with trio.move_on_after(timeout_s):
            await self.mirror.wait_empty()

    async def _hold_lease_once(self) -> None:
        try:
            await self._store.hold_lease(self.node_id, self._lease_s)
            self._trouble(None)
        except StoreUnavailable as exc:
            self._trouble(str(exc) or type(exc).__name__)

    async def _keep_lease(self) -> None:
        """Refresh the lease every third of it; also refresh the held sessions' keys,
        and pick up cuts recorded for requests running here (a control message
        published while this node was not subscribed is lost; the record is not)."""
        seen_at = trio.current_time()
        while True:
            with trio.move_on_after(self._lease_s / 3):
                await self._lease_wanted.wait()
            self._lease_wanted = trio.Event()
            await self._hold_lease_once()
            if self._problem is not None:
                continue
            if trio.current_time() - seen_at >= self._ttl_s / 3:
                seen_at = trio.current_time()
                for session in self._held():
                    if session.connection is not None:
                        self.mirror.add(SessionSeen(session.session_id))
            await self._apply_recorded_cuts()
            await self._follow_moves(detached_only=True)

    async def _follow_moves(self, *, detached_only: bool) -> None:
        """Move away each held session that the store says another node took over
        (epoch above this node's): what a lost "moved" message would have done."""
        for session in self._held():
            if session.moved_to is not None or session.ended or not session.resumable:
                continue
            if detached_only and session.connection is not None:
                continue
            try:
                owner = await self._store.session_owner(session.session_id)
            except StoreUnavailable:
                return
            if owner is None:
                continue
            node, epoch = owner
            if node != self.node_id and epoch > self._epochs.get(session.session_id, 1):
                session.move_to(node)

    async def _apply_recorded_cuts(self) -> None:
        for session in self._held():
            if session.moved_to is None or not session.registry.running_count:
                continue
            try:
                cuts = await self._store.cuts(session.session_id)
            except StoreUnavailable:
                return
            for request_id, msg_id in cuts.items():
                record = session.registry.get(request_id)
                if record is not None and record.runs_on is None:
                    session.cut_from_elsewhere(msg_id, [request_id], "interrupted on another node")

    async def _listen(self) -> None:
        """Act on this node's control messages; resubscribe (with backoff) after trouble."""
        while True:
            try:
                async with self._store.control_messages(self.node_id) as messages:
                    # What was published while this node was not subscribed is lost:
                    # the durable records say it again.
                    await self._apply_recorded_cuts()
                    await self._follow_moves(detached_only=False)
                    async for message in messages:
                        self._on_control(message)
            except StoreUnavailable as exc:
                self._trouble(str(exc) or type(exc).__name__)
            await trio.sleep(_RETRY_S)

    def _on_control(self, message: ControlMessage) -> None:
        sessions = [s for s in self._held() if s.session_id == message.session_id]
        if message.kind == "interrupt":
            self.counts["interrupts_received_total"] += 1
            for session in sessions:
                running_here = [
                    rid
                    for rid in message.request_ids
                    if (record := session.registry.get(rid)) is not None and record.runs_on is None
                ]
                if running_here:
                    session.cut_from_elsewhere(message.msg_id, running_here, message.reason)
        elif message.kind == "moved":
            for session in sessions:
                if self._epochs.get(session.session_id, 1) < message.epoch:
                    session.move_to(message.from_node)
            flushed = ControlMessage(
                "flushed", message.session_id, from_node=self.node_id, epoch=message.epoch
            )
            to_node = message.from_node

            async def answer() -> None:
                # Behind every write queued before it: once it is sent, they are stored.
                await self._store.send_control(to_node, flushed)

            # Now, not at the mirror's next coalescing tick: a takeover waits for it.
            self.mirror.add_urgent(answer)
        elif message.kind == "flushed":
            waiter = self._flushes.get((message.session_id, message.epoch))
            if waiter is not None:
                waiter.set()

    async def _send_control(self) -> None:
        """Send queued control work (cuts to other nodes) in order; retry while the
        store is unreachable."""
        while True:
            if not self._control_out:
                self._control_waiting = trio.Event()
                await self._control_waiting.wait()
            try:
                await self._control_out[0]()
            except StoreUnavailable as exc:
                self._trouble(str(exc) or type(exc).__name__)
                await trio.sleep(_RETRY_S)
                continue
            self._control_out.pop(0)

    def _held(self) -> list[Session]:
        return list(self._server.sessions.values())

    # ------------------------------------------------------------------ ClusterLink

    def session_opened(self, session_id: str, token: str) -> None:
        self._epochs[session_id] = 1
        digest = token_digest(token)

        async def open_session() -> None:
            await self._store.open_session(
                session_id, owner=self.node_id, token_digest=digest, ttl_s=self._ttl_s
            )
            self._openings.settle(session_id)

        if self.mirror.add(open_session, session_id) and self._problem is None:
            self._openings.opened(session_id)  # (none waits on a store known unreachable)

    async def session_stored(self, session_id: str) -> None:
        """Return once the store holds this session's record (bounded: ``opening.py``)."""
        await self._openings.wait_stored(session_id)

    def session_detached(self, session_id: str, window_s: float) -> None:
        async def detach() -> None:
            await self._store.detach(session_id, window_s=window_s, owner=self.node_id)

        self.mirror.add(detach, session_id)

    def session_closed(self, session_id: str) -> None:
        self._epochs.pop(session_id, None)
        self._openings.settle(session_id)

        async def close() -> None:
            await self._store.close_session(session_id, owner=self.node_id)

        # Queued even for a lost session: its keys must go.
        self.mirror.lost.discard(session_id)
        self.mirror.add(close, session_id)

    def request_started(self, session_id: str, request_id: str) -> None:
        self.mirror.add(RequestStarted(session_id, request_id, self.node_id))

    def frame_written(
        self,
        session_id: str,
        request_id: str,
        sort: FrameSort,
        seq: int,
        data: str | bytes,
        *,
        frames: int = -1,
    ) -> None:
        # (STREAM looked up by identity: an Enum's hash is a Python call, once per frame.)
        stored = StoredSort.STREAM if sort is FrameSort.STREAM else STORED_SORT[sort]
        self.mirror.add(
            FrameWrite(session_id, request_id, stored, seq, data, self.node_id, frames),
            session_id,
        )
        if sort is FrameSort.DONE:
            self.mirror.add(RequestEnded(session_id, request_id))

    def agent_state_changed(self, session_id: str, state: str) -> None:
        async def save() -> None:
            await self._store.save_agent_state(session_id, state)

        self.mirror.add(save, session_id)

    def interrupt_elsewhere(
        self, node_id: str, session_id: str, msg_id: str, request_ids: list[str], reason: str
    ) -> None:
        self.counts["interrupts_sent_total"] += 1
        message = ControlMessage(
            "interrupt",
            session_id,
            from_node=self.node_id,
            msg_id=msg_id,
            request_ids=tuple(request_ids),
            reason=reason,
        )

        async def send() -> None:
            # Durably first: the node checks these if the publish is lost.
            for request_id in request_ids:
                await self._store.record_cut(session_id, request_id, msg_id, ttl_s=self._ttl_s)
            await self._store.send_control(node_id, message)

        self._control_out.append(send)
        self._control_waiting.set()

    # ------------------------------------------------------------------ resume

    async def resume(self, ws: WebSocketConnection, message: ResumeMessage) -> HandOver | None:
        """Decide a RESUME through the store (atomically across nodes), then serve the
        session held here, or take it over from the node that held it."""
        session_id = message.session_id
        if self._server.draining:
            # (A connection opened just before the drain.) The client resumes on
            # another node; the token is not spent here.
            self.counts["resumes_refused_total"] += 1
            await self._refuse(ws, message, Redeemed.UNKNOWN)
            return None
        token = new_token()
        try:
            taken = await take_over_waiting_for_spender(
                self._store,
                session_id,
                token_digest=token_digest(message.payload.token),
                new_token_digest=token_digest(token),
                node_id=self.node_id,
                max_denied=MAX_DENIED_PER_SESSION,
                lease_s=self._lease_s,
            )
        except StoreUnavailable as exc:
            self._trouble(str(exc) or type(exc).__name__)
            return await self._resume_here_only(ws, message)
        local = self._server.sessions.get(session_id)
        verdict = taken.verdict
        if verdict is TakeOverVerdict.UNKNOWN and session_id in self.mirror.lost:
            return await self._resume_here_only(ws, message)
        if verdict is not TakeOverVerdict.OK:
            self.counts["resumes_refused_total"] += 1
            await self._refuse(ws, message, Redeemed(verdict.value))
            return None
        self._epochs[session_id] = taken.epoch
        if (
            taken.previous_owner == self.node_id
            and local is not None
            and local.moved_to is None
            and not local.ended
        ):
            self.counts["resumes_local_total"] += 1
            local.events.cluster("resumed_here", epoch=taken.epoch)
            self._server.resume_book.reissued(session_id, token)
            return HandOver(local, message, token)
        self.counts["resumes_remote_total"] += 1
        if local is not None and local.moved_to is None:
            local.move_to(self.node_id)  # an earlier life here, handed on since
        try:
            if taken.previous_owner and taken.previous_owner != self.node_id:
                await self._ask_to_flush(taken.previous_owner, session_id, taken.epoch)
            session = await self._take_over(
                message, taken.epoch, token, taken.agent_state, taken.previous_owner
            )
        except StoreUnavailable as exc:
            self._trouble(str(exc) or type(exc).__name__)
            await self._refuse(ws, message, Redeemed.UNKNOWN)
            return None
        return HandOver(session, message, token)

    async def _ask_to_flush(self, owner: str, session_id: str, epoch: int) -> None:
        """Tell the previous owner the session is here now, and wait until it says that
        everything it wrote of it is in the store: its mirror is asynchronous, and a
        frame the client received from it may not be stored yet.

        Waited for as long as the owner lives (its lease is looked at every third of
        it), at most :data:`FLUSH_WAIT_MAX_S`: a slow node is waited for, a dead one
        is not (what it did not store is lost with it, and NODE_LOST says so).
        """
        flushed = self._flushes[(session_id, epoch)] = trio.Event()
        try:
            moved = ControlMessage("moved", session_id, from_node=self.node_id, epoch=epoch)
            await self._store.send_control(owner, moved)
            with trio.move_on_after(FLUSH_WAIT_MAX_S) as waited:
                while await self._store.node_alive(owner):
                    with trio.move_on_after(self._lease_s / 3):
                        await flushed.wait()
                    if flushed.is_set():
                        return
            if waited.cancelled_caught:
                logger.warning(
                    "previous owner did not confirm its frames are stored",
                    session_id=session_id,
                    owner=owner,
                )
        finally:
            del self._flushes[(session_id, epoch)]

    async def _take_over(
        self,
        message: ResumeMessage,
        epoch: int,
        token: str,
        agent_state: str | None,
        previous_owner: str | None = None,
    ) -> Session:
        """Open the session here from what the store holds: its frames (the replay),
        the requests still running elsewhere (relayed), what its agents kept."""
        session_id = message.session_id
        frames, running = await self._store.read_session(session_id)
        restored = restore_stream(
            frames, capacity_bytes=self._config.resume_buffer_kib * 1024, running=running
        )
        await settle_requests_elsewhere(
            self._store,
            message,
            restored,
            previous_owner=previous_owner if previous_owner != self.node_id else None,
            node_id=self.node_id,
            on_claim=self._claimed_unnamed,
            max_bytes=self.mirror.max_bytes,
            ttl_s=self._ttl_s,
        )
        session = await self._server.adopt_session(session_id, epoch=epoch, token=token)
        session.replay = restored.replay
        session.events.cluster(
            "taken_over",
            epoch=epoch,
            frames_in_store=len(frames),
            relayed={rid: r.node_id for rid, r in restored.running.items()},
        )
        if agent_state:
            restore_session_states(self._server.agents, session.agent_state, agent_state)
        relay = Relay(
            self._store,
            session_id=session_id,
            after=restored.last_entry_id,
            registry=session.registry,
            lanes=session.lanes,
            poll_s=self._lease_s / 3,
            node_id=self.node_id,
            on_claim=lambda record: self._claimed(session, record),
        )
        for request_id, elsewhere in restored.running.items():
            # The client may hold frames the store does not have yet (a dead owner's
            # last ones): the relay goes on after the last it has.
            received = message.payload.last_seq.get(request_id, -1) + 1
            session.relay_request(
                request_id,
                node_id=elsewhere.node_id,
                next_seq=max(elsewhere.next_seq, received),
                relay=relay,
            )
        return session

    def _claimed_unnamed(self, session_id: str, request_id: str) -> None:
        self.counts["node_lost_claims_total"] += 1
        self.mirror.add(RequestEnded(session_id, request_id))

    def _claimed(self, session: Session, record: RequestRecord) -> None:
        self.counts["node_lost_claims_total"] += 1
        session.events.cluster("node_lost_claimed", record.request_id, node=record.runs_on)

    async def _resume_here_only(
        self, ws: WebSocketConnection, message: ResumeMessage
    ) -> HandOver | None:
        """The store cannot decide (unreachable, or the session lost to it): resume
        only a session held here, on the local book, as a single server does."""
        local = self._server.sessions.get(message.session_id)
        if local is None or local.ended or local.moved_to is not None or not local.resumable:
            await self._refuse(ws, message, Redeemed.UNKNOWN)
            return None
        verdict, token = self._server.resume_book.redeem(
            message.session_id, message.payload.token, now=trio.current_time()
        )
        if verdict is not Redeemed.OK or token is None:
            await self._refuse(ws, message, verdict)
            return None
        self.counts["resumes_local_total"] += 1
        return HandOver(local, message, token)

    async def _refuse(self, ws: WebSocketConnection, msg: ResumeMessage, why: Redeemed) -> None:
        await refuse_in_cluster(
            ws,
            msg,
            why,
            node_id=self.node_id,
            problem=self._problem,
            draining=self._server.draining,
        )
