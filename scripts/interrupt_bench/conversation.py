"""One protocol-v1 session seen from the load generator: what was sent, what came back, when.

:class:`Conversation` turns frames into timestamps the scenarios need (when the
ACK of an INTERRUPT arrived, when a request's first STREAM frame and its DONE
arrived, how many STREAM frames of a request arrived after an ACK named it) and
runs every frame through :class:`trio_agent.protocol.guarantees.GuaranteeChecker`, so a
server that breaks a protocol guarantee under load shows up in the report as
violations, whatever its latency.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from trio_agent.protocol.guarantees import GuaranteeChecker, Violation

from .wsclient import WebSocketClient, connect


@dataclass(eq=False)
class RequestTrace:
    """One REQUEST and what came back for it. Times are :func:`time.perf_counter`."""

    request_id: str
    sent_at: float
    done: asyncio.Future[None]
    first_frame_at: float | None = None
    frames: int = 0
    stream_bytes: int = 0
    done_at: float | None = None
    done_payload: dict[str, Any] | None = None
    #: When the ACK naming this request arrived.
    acked_at: float | None = None
    #: STREAM frames of this request that arrived after an ACK named it (must be 0).
    stale_frames: int = 0


@dataclass(eq=False)
class InterruptTrace:
    """One INTERRUPT and its ACK."""

    msg_id: str
    target: str | None
    sent_at: float
    acked: asyncio.Future[None]
    ack_at: float | None = None
    ack_payload: dict[str, Any] | None = None
    #: STREAM frames (of any request) the client had received when it sent the INTERRUPT.
    frames_at_send: int = 0
    #: STREAM frames (of any request) received between sending the INTERRUPT and its ACK.
    frames_before_ack: int = 0


@dataclass(eq=False)
class HeartbeatTrace:
    """One HEARTBEAT and the server's reply (the HEARTBEAT whose ``ref`` is its ``msg_id``)."""

    msg_id: str
    sent_at: float
    answered: asyncio.Future[None]
    answered_at: float | None = None


@dataclass(eq=False)
class Conversation:
    """A connected session. Open it with :meth:`open`."""

    client: WebSocketClient | None = None
    session_id: str | None = None
    check: bool = True
    checker: GuaranteeChecker = field(default_factory=GuaranteeChecker)
    requests: dict[str, RequestTrace] = field(default_factory=dict)
    interrupts: dict[str, InterruptTrace] = field(default_factory=dict)
    heartbeats: dict[str, HeartbeatTrace] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    stream_frames: int = 0
    _started: asyncio.Future[None] | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        path: str,
        *,
        check: bool = True,
        receive_buffer: int | None = None,
    ) -> Conversation:
        """Connect and wait for the SESSION frame."""
        conversation = cls(check=check)
        conversation._started = asyncio.get_running_loop().create_future()
        conversation.client = await connect(
            host, port, path, conversation.on_message, receive_buffer=receive_buffer
        )
        await conversation._started
        return conversation

    @property
    def violations(self) -> list[Violation]:
        return self.checker.violations

    # -- receiving -------------------------------------------------------------------

    def on_message(self, text: str, at: float) -> None:
        frame = orjson.loads(text)
        if self.check:
            self.checker.received(frame)
        kind = frame.get("msg_type")
        if kind == "STREAM":
            self.stream_frames += 1
            trace = self.requests.get(frame.get("request_id"))
            if trace is not None:
                if trace.first_frame_at is None:
                    trace.first_frame_at = at
                trace.frames += 1
                trace.stream_bytes += len(text)
                if trace.acked_at is not None:
                    trace.stale_frames += 1
        elif kind == "DONE":
            trace = self.requests.get(frame.get("request_id"))
            if trace is not None and trace.done_at is None:
                trace.done_at = at
                trace.done_payload = frame.get("payload")
                if not trace.done.done():
                    trace.done.set_result(None)
        elif kind == "INTERRUPT_ACK":
            interrupt = self.interrupts.get(frame.get("ref"))
            if interrupt is not None and interrupt.ack_at is None:
                interrupt.ack_at = at
                interrupt.ack_payload = payload = frame.get("payload") or {}
                interrupt.frames_before_ack = self.stream_frames - interrupt.frames_at_send
                for rid in payload.get("interrupted", ()):
                    named = self.requests.get(rid)
                    if named is not None and named.acked_at is None:
                        named.acked_at = at
                if not interrupt.acked.done():
                    interrupt.acked.set_result(None)
        elif kind == "HEARTBEAT":
            heartbeat = self.heartbeats.get(frame.get("ref"))
            if heartbeat is not None and heartbeat.answered_at is None:
                heartbeat.answered_at = at
                if not heartbeat.answered.done():
                    heartbeat.answered.set_result(None)
        elif kind == "SESSION":
            self.session_id = frame.get("session_id")
            if self._started is not None and not self._started.done():
                self._started.set_result(None)
        elif kind == "ERROR":
            self.errors.append(frame)

    # -- sending ---------------------------------------------------------------------

    def _send(self, frame: dict[str, Any]) -> None:
        assert self.client is not None
        if self.check:
            self.checker.sent(frame)
        self.client.send_text(orjson.dumps(frame).decode())

    def request(
        self, request_id: str, *, words: int, words_per_s: float, agent: str = "lorem"
    ) -> RequestTrace:
        """Send a REQUEST for the ``lorem`` agent; returns its trace at once."""
        trace = RequestTrace(
            request_id, time.perf_counter(), asyncio.get_running_loop().create_future()
        )
        self.requests[request_id] = trace
        self._send(
            {
                "msg_type": "REQUEST",
                "msg_id": f"c{next(self._ids)}",
                "request_id": request_id,
                "payload": {
                    "input": "bench",
                    "agent": agent,
                    "options": {"words": words, "words_per_s": words_per_s},
                },
            }
        )
        return trace

    def interrupt(self, request_id: str | None = None) -> InterruptTrace:
        """Send an INTERRUPT (one request, or all with ``None``); returns its trace at once."""
        msg_id = f"c{next(self._ids)}"
        trace = InterruptTrace(msg_id, request_id, 0.0, asyncio.get_running_loop().create_future())
        trace.frames_at_send = self.stream_frames
        self.interrupts[msg_id] = trace
        frame: dict[str, Any] = {"msg_type": "INTERRUPT", "msg_id": msg_id}
        if request_id is not None:
            frame["request_id"] = request_id
        trace.sent_at = time.perf_counter()
        self._send(frame)
        return trace

    def heartbeat(self) -> HeartbeatTrace:
        """Send a HEARTBEAT; returns its trace at once."""
        msg_id = f"c{next(self._ids)}"
        trace = HeartbeatTrace(msg_id, 0.0, asyncio.get_running_loop().create_future())
        self.heartbeats[msg_id] = trace
        trace.sent_at = time.perf_counter()
        self._send({"msg_type": "HEARTBEAT", "msg_id": msg_id})
        return trace

    def finish(self) -> list[Violation]:
        """Check the end state of the conversation (every DONE and ACK arrived)."""
        return self.checker.finish() if self.check else []

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
