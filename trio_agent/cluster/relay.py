"""The relay: a request that runs on another node, as its task on this one.

A client resumed its session here while one of its requests still runs on node A.
The request's task here is :func:`relay_request`: it tails the session's stream in
the store and queues A's frames of that request on this session's lanes, so the
writer sends them as it would this node's own, in ``seq`` order, each once.

It runs inside the request's own cancel scope (``RequestRunner.start_relay``), so
an INTERRUPT read here cuts it exactly as a local request: the scope is
cancelled, the frames queued are dropped, the ACK and the DONE are written here
(counting what this client received), and node A is told to stop the request.

When A's DONE comes through the stream, the relay ends the request with A's
status and this node renders the DONE (its ``frames``: what this client
received). When A's lease is gone, the relay claims the request (one claim wins
in the store) and ends it with ``DONE{failed, NODE_LOST}``; a relay that loses the
claim goes on tailing and relays the winner's DONE, and claims again whenever the
stream is quiet: should the winner die before it stored its DONE, the claim is
this relay's once the winner's lease is gone too. Before the relays start,
:func:`settle_requests_elsewhere` settles what a dead node left half-stored: a
request whose DONE the client holds but the store lacks, and one the client holds
frames of but the store never heard of. A request the RESUME does not name is
never relayed. ``docs/cluster.md``, "A node dies".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio
from loguru import logger

from trio_agent.cluster.store import ClusterStore, RequestStarted, StoredSort, StoreUnavailable
from trio_agent.cluster.stream_replay import RestoredStream, RunningElsewhere
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import DoneStatus, ErrorCode, ErrorInfo, ResumeMessage
from trio_agent.server.lanes import Outbound, OutboundLanes
from trio_agent.server.registry import RequestRecord, RequestRegistry
from trio_agent.server.replay import Unknown

__all__ = [
    "NODE_LOST_MESSAGE",
    "Relay",
    "book_unstored_requests",
    "end_unnamed_requests",
    "settle_requests_elsewhere",
]

NODE_LOST_MESSAGE = "the node running this request stopped before it ended"

#: The DONE payload's fields the relay sets itself; the rest are kept as they are.
_OWN_FIELDS = frozenset({"status", "interrupted", "reason", "frames", "error", "cancelled_by"})
_RETRY_S = 0.2


class Relay:
    """The relays of one session taken over by this node.

    :param store: where the session's stream is.
    :param session_id: the session.
    :param after: the stream id of the last entry already read (the replay holds it).
    :param registry: the session's requests.
    :param lanes: the session's lanes.
    :param poll_s: how long one wait on the stream lasts before the relay looks at
        the running node's lease again (a third of the lease).
    :param node_id: this node, the claimer its claims name.
    :param on_claim: told each NODE_LOST claim this node won.
    """

    def __init__(
        self,
        store: ClusterStore,
        *,
        session_id: str,
        after: str,
        registry: RequestRegistry,
        lanes: OutboundLanes,
        poll_s: float,
        node_id: str,
        on_claim: Callable[[RequestRecord], None],
    ) -> None:
        self._store = store
        self._session_id = session_id
        self._after = after
        self._registry = registry
        self._lanes = lanes
        self._poll_s = poll_s
        self._node_id = node_id
        self._on_claim = on_claim

    async def __call__(self, record: RequestRecord) -> None:
        """Relay ``record``'s frames until its DONE; cancelled by an INTERRUPT or the session."""
        node = record.runs_on
        assert node is not None
        after = self._after
        look_at_lease = True
        while True:
            try:
                if look_at_lease and await self._claimed(record, node):
                    return
                frames = await self._store.wait_frames(
                    self._session_id, after, timeout_s=self._poll_s
                )
            except StoreUnavailable as exc:
                logger.debug("relay waits for the store", error=str(exc))
                await trio.sleep(_RETRY_S)
                continue
            look_at_lease = not frames
            for frame in frames:
                after = frame.entry_id
                if frame.request_id != record.request_id:
                    continue
                if frame.sort is StoredSort.DONE:
                    self._end_as_told(record, frame.data)
                    return
                if frame.sort is StoredSort.AUDIO:
                    # Spoken replies are not relayed (docs/cluster.md, limits).
                    continue
                if frame.seq < record.frames_queued:
                    continue  # the replay had it
                await self._lanes.wait_for_stream_room(record)
                self._lanes.push_stream(
                    Outbound(FrameKind.STREAM, frame.data, record=record, seq=frame.seq)
                )
                record.frames_queued = frame.seq + 1

    async def _claimed(self, record: RequestRecord, node: str) -> bool:
        """When ``node`` is dead, claim ``record`` and end it with NODE_LOST; return
        whether this relay ended it (it did not when the node lives, or another
        node holds the claim: that one's DONE comes through the stream, or, should
        it die first, a later call here wins the claim from it)."""
        if await self._store.node_alive(node):
            return False
        if not await self._store.claim_request(
            self._session_id, record.request_id, dead_node=node, claimer=self._node_id
        ):
            return False
        self._on_claim(record)
        self._end(record, DoneStatus.FAILED, "node lost", _node_lost(node))
        return True

    def _end_as_told(self, record: RequestRecord, data: str | bytes) -> None:
        """The running node's DONE: end the request with its status; this node renders
        the DONE, so ``frames`` counts what this client received."""
        try:
            payload: dict[str, Any] = json.loads(data)["payload"]
            status = DoneStatus(payload["status"])
            error = ErrorInfo.model_validate(payload["error"]) if payload.get("error") else None
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("relayed DONE unreadable", error=str(exc))
            payload, status, error = {}, DoneStatus.FAILED, _node_lost(record.runs_on or "?")
        record.cancelled_by = payload.get("cancelled_by")
        record.done_fields = {k: v for k, v in payload.items() if k not in _OWN_FIELDS}
        self._end(record, status, payload.get("reason"), error)

    def _end(
        self, record: RequestRecord, status: DoneStatus, reason: str | None, error: ErrorInfo | None
    ) -> None:
        if self._registry.end(record, status, reason=reason, error=error):
            self._lanes.push_stream_terminal(Outbound(FrameKind.DONE, record=record))


async def settle_requests_elsewhere(
    store: ClusterStore,
    message: ResumeMessage,
    restored: RestoredStream,
    *,
    previous_owner: str | None,
    node_id: str,
    on_claim: Callable[[str, str], None],
    max_bytes: int,
    ttl_s: float,
) -> None:
    """Before a take-over relays ``restored.running``: drop the requests the client
    does not name (:func:`end_unnamed_requests`, claiming as ``node_id``) and add
    those the client holds frames of that ``previous_owner`` (another node, or
    ``None``) never stored (:func:`book_unstored_requests`). Cancellation: store
    calls, each a checkpoint."""
    for request_id in await end_unnamed_requests(
        store, message, restored.running, claimer=node_id, on_claim=on_claim
    ):
        del restored.running[request_id]
    if previous_owner is not None:
        await book_unstored_requests(
            store, message, restored, ran_on=previous_owner, max_bytes=max_bytes, ttl_s=ttl_s
        )


async def end_unnamed_requests(
    store: ClusterStore,
    message: ResumeMessage,
    running: dict[str, RunningElsewhere],
    *,
    claimer: str,
    on_claim: Callable[[str, str], None],
) -> list[str]:
    """The requests of ``running`` (still running elsewhere, says the store) that the
    RESUME does not name: none is relayed or reported to this client, and each whose
    node is dead is claimed as ``claimer`` (``on_claim(session id, request id)`` for
    the ones this node wins, which then end it in the store; one claimed by a node
    that died since is won again). Returns their ids.

    Why: a client names in ``last_seq`` every request it still expects frames of, so
    a request it leaves out is one whose DONE it holds. The store can still say such
    a request runs when the node that wrote that DONE had not stored it: it died
    (the mirror's lag), or it lives but did not confirm its frames stored before the
    take-over went on (a node stalled by load). Relaying it ended it a second time
    (NODE_LOST, or its own DONE once stored late, after its frames again). A live
    node finishes such a request into the store, where nobody reads it.
    Cancellation: each look-up awaits the store; cancelled, nothing was relayed,
    and a claim already won was handed to ``on_claim`` (synchronously, as soon as
    the store said so), so it is ended in the store all the same.
    """
    unnamed = [rid for rid in running if rid not in message.payload.last_seq]
    for request_id in unnamed:
        node = running[request_id].node_id
        if await store.node_alive(node):
            continue
        if await store.claim_request(
            message.session_id, request_id, dead_node=node, claimer=claimer
        ):
            on_claim(message.session_id, request_id)
    return unnamed


async def book_unstored_requests(
    store: ClusterStore,
    message: ResumeMessage,
    restored: RestoredStream,
    *,
    ran_on: str,
    max_bytes: int,
    ttl_s: float,
) -> list[str]:
    """The requests the RESUME names with frames received (``last_seq`` >= 0) of which
    the store has no trace, when the previous owner ``ran_on`` is dead: it wrote them
    to the client and was killed before it stored their start (the mirror's lag).
    They are booked in the store as running on ``ran_on`` and added to
    ``restored.running``, so the relay claims each (one claim wins) and ends it with
    NODE_LOST, ``frames`` the exact count the client holds. Without this they ended
    with RESUME_GAP and ``frames: 0``. While ``ran_on`` lives (it flushed what it
    wrote), a request the store does not know was evicted: RESUME_GAP says so.
    Returns their ids. Cancellation: store calls, each a checkpoint; cancelled, the
    RESUME is not answered and nothing was added to ``restored``.
    """
    unstored = [
        request_id
        for request_id, last_seq in message.payload.last_seq.items()
        if last_seq >= 0
        and request_id not in restored.running
        and isinstance(restored.replay.replay(request_id, last_seq), Unknown)
    ]
    if not unstored or await store.node_alive(ran_on):
        return []
    booked = [RequestStarted(message.session_id, rid, ran_on) for rid in unstored]
    await store.write(booked, max_bytes=max_bytes, ttl_s=ttl_s)
    for request_id in unstored:
        restored.running[request_id] = RunningElsewhere(ran_on)
        restored.replay.request_started(request_id)
    return unstored


def _node_lost(node: str) -> ErrorInfo:
    return ErrorInfo(code=ErrorCode.NODE_LOST, message=f"{NODE_LOST_MESSAGE} (node {node})")
