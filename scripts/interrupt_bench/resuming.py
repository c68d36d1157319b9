"""A protocol-v1.2 session seen from the load generator, across dropped connections.

:class:`ResumingSession` is :class:`~interrupt_bench.conversation.Conversation`'s
counterpart for the resume benchmark: it can stop reading (frames pile up in
flight, as on a network that stalls), drop its TCP connection with a reset (no
close frame: the session waits for a RESUME), connect anew and resume, timing
each step. Every STREAM ``seq`` and every DONE of every reply is kept, over all
its connections, so the frames lost and duplicated are counted exactly, and
every frame also goes through
:class:`trio_agent.protocol.guarantees.GuaranteeChecker` (guarantee 11: across a
resume, ``seq`` contiguous, no duplicate, exactly one DONE).

All waits are bounded by the caller (``bounded`` in the scenarios); every
connection goes to the host it is given (127.0.0.1 in the benchmarks).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from trio_agent.protocol.guarantees import GuaranteeChecker, Violation

from .wsclient import WebSocketClient, connect

#: SO_LINGER on, 0 s: closing the socket sends a TCP reset, not a FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass(eq=False)
class ReplyTrace:
    """One REQUEST and every frame of its reply, over every connection."""

    request_id: str
    words: int
    done: asyncio.Future[None]
    #: Every STREAM ``seq`` received, in the order received.
    seqs: list[int] = field(default_factory=list)
    #: Every DONE payload received (exactly one is right).
    dones: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        """The last ``seq`` received (-1: none): what RESUME's ``last_seq`` says."""
        return self.seqs[-1] if self.seqs else -1

    @property
    def ended(self) -> bool:
        return bool(self.dones)

    def figures(self) -> dict[str, int]:
        """Frames lost, duplicated and out of order, against what the DONE says
        was written (``frames``: each frame counted once, whatever the replays)."""
        written = self.dones[0].get("frames") if self.dones else None
        distinct = set(self.seqs)
        expected = written if isinstance(written, int) else max(distinct, default=-1) + 1
        error = self.dones[0].get("error") if self.dones else None
        gap = isinstance(error, dict) and error.get("code") == "RESUME_GAP"
        return {
            "frames": len(self.seqs),
            "lost": len(set(range(expected)) - distinct),
            "duplicated": len(self.seqs) - len(distinct),
            "out_of_order": sum(
                1 for i, seq in enumerate(self.seqs) if seq != (self.seqs[i - 1] + 1 if i else 0)
            ),
            "completed": int(bool(self.dones) and self.dones[0].get("status") == "completed"),
            "words_exact": int(written == self.words),
            "resume_gaps": int(gap),
            "missing_dones": int(not self.dones),
            "extra_dones": max(0, len(self.dones) - 1),
        }


@dataclass(eq=False)
class ResumeTrace:
    """One drop and resume. Times are :func:`time.perf_counter`."""

    last_seq: dict[str, int]
    #: The new TCP connection was started.
    connect_at: float
    #: The new connection's SESSION arrived (TCP and WebSocket handshakes done).
    session_at: float | None = None
    resume_sent_at: float | None = None
    resumed_at: float | None = None
    #: The first STREAM or DONE after RESUMED: the first frame of the replay.
    first_frame_at: float | None = None
    #: What RESUMED said of each request ("running" or "done").
    requests: dict[str, str] = field(default_factory=dict)
    #: Resolved with the first STREAM or DONE after RESUMED.
    first_frame: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(eq=False)
class ResumingSession:
    """A session that survives its connections. Open it with :meth:`open`."""

    host: str
    port: int
    path: str
    checker: GuaranteeChecker = field(default_factory=GuaranteeChecker)
    client: WebSocketClient | None = None
    session_id: str | None = None
    token: str | None = None
    replies: dict[str, ReplyTrace] = field(default_factory=dict)
    resumes: list[ResumeTrace] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Frames read from a connection after the session dropped it (must be 0).
    frames_after_drop: int = 0
    _generation: int = 0
    _opened: asyncio.Future[None] | None = None
    _resumed: asyncio.Future[None] | None = None
    _watch: tuple[list[ReplyTrace], int, asyncio.Future[None]] | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> ResumingSession:
        """Connect and wait for the SESSION frame, which must offer resumption."""
        session = cls(host, port, path)
        await session._connect()
        if session.token is None:
            raise RuntimeError("the server's SESSION offers no resume token: resumption is off")
        return session

    @property
    def violations(self) -> list[Violation]:
        return self.checker.violations

    # -- connections -------------------------------------------------------------------

    async def _connect(self) -> None:
        """Open a connection and wait for its SESSION. Frames of earlier
        connections are told apart by their generation."""
        self._generation += 1
        generation = self._generation
        self._opened = asyncio.get_running_loop().create_future()
        self.client = await connect(
            self.host,
            self.port,
            self.path,
            lambda text, at: self._on_message(generation, text, at),
        )
        await self._opened

    async def drop(self, stall_s: float) -> dict[str, int]:
        """Stop reading for ``stall_s`` (frames the server writes meanwhile stay in
        flight), then reset the connection without a close frame. Returns the
        ``last_seq`` of every reply still running: what the client received."""
        client = self.client
        assert client is not None
        assert client.transport is not None
        client.pause_reading()
        await asyncio.sleep(stall_s)
        self._generation += 1  # anything the old connection still delivers is counted
        sock = client.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        client.transport.abort()
        return {rid: r.last_seq for rid, r in self.replies.items() if not r.ended}

    async def resume(self, last_seq: dict[str, int]) -> ResumeTrace:
        """Connect anew, send RESUME as the first frame, and wait for RESUMED.
        The first frame after RESUMED is timed as it arrives (``first_frame``)."""
        trace = ResumeTrace(last_seq, time.perf_counter())
        self.resumes.append(trace)
        self.checker.reconnected()
        await self._connect()
        trace.session_at = time.perf_counter()
        self._resumed = asyncio.get_running_loop().create_future()
        trace.resume_sent_at = time.perf_counter()
        self._send(
            {
                "msg_type": "RESUME",
                "msg_id": f"c{next(self._ids)}",
                "session_id": self.session_id,
                "payload": {"token": self.token, "last_seq": last_seq},
            }
        )
        await self._resumed
        return trace

    async def close(self) -> None:
        """Close with 1000: an intentional end, the session ends at once."""
        if self.client is not None:
            await self.client.close()

    # -- requests ----------------------------------------------------------------------

    def request(self, request_id: str, *, words: int, words_per_s: float) -> ReplyTrace:
        """Send a REQUEST for the ``lorem`` agent; returns its trace at once."""
        trace = ReplyTrace(request_id, words, asyncio.get_running_loop().create_future())
        self.replies[request_id] = trace
        self._send(
            {
                "msg_type": "REQUEST",
                "msg_id": f"c{next(self._ids)}",
                "request_id": request_id,
                "payload": {
                    "input": "bench",
                    "agent": "lorem",
                    "options": {"words": words, "words_per_s": words_per_s},
                },
            }
        )
        return trace

    def reached(self, replies: list[ReplyTrace], seq: int) -> asyncio.Future[None]:
        """A future that resolves once every reply of ``replies`` has received
        ``seq`` or ended (one watch at a time)."""
        future = asyncio.get_running_loop().create_future()
        self._watch = (replies, seq, future)
        self._check_watch()
        return future

    def finish(self) -> list[Violation]:
        """Check the end state: every reply has its DONE."""
        return self.checker.finish()

    # -- receiving ---------------------------------------------------------------------

    def _send(self, frame: dict[str, Any]) -> None:
        assert self.client is not None
        self.checker.sent(frame)
        self.client.send_text(orjson.dumps(frame).decode())

    def _on_message(self, generation: int, text: str, at: float) -> None:
        if generation != self._generation:
            self.frames_after_drop += 1
            return
        frame = orjson.loads(text)
        self.checker.received(frame)
        kind = frame.get("msg_type")
        payload = frame.get("payload") or {}
        if kind in ("STREAM", "DONE"):
            self._reply_frame(kind, frame.get("request_id"), payload, at)
        elif kind == "SESSION":
            if self.session_id is None:
                self.session_id = frame.get("session_id")
                self.token = (payload.get("resume") or {}).get("token")
            if self._opened is not None and not self._opened.done():
                self._opened.set_result(None)
        elif kind == "RESUMED":
            trace = self.resumes[-1]
            trace.resumed_at = at
            trace.requests = dict(payload.get("requests") or {})
            self.token = (payload.get("resume") or {}).get("token")
            if self._resumed is not None and not self._resumed.done():
                self._resumed.set_result(None)
        elif kind == "ERROR":
            self.errors.append(f"ERROR {payload.get('code')}: {payload.get('message')}")
            # A refused RESUME: nothing more will come on this connection.
            if self._resumed is not None and not self._resumed.done():
                self._resumed.set_exception(RuntimeError(self.errors[-1]))

    def _reply_frame(self, kind: str, rid: Any, payload: dict[str, Any], at: float) -> None:
        if self.resumes and self.resumes[-1].first_frame_at is None:
            self.resumes[-1].first_frame_at = at
            self.resumes[-1].first_frame.set_result(None)
        reply = self.replies.get(rid) if isinstance(rid, str) else None
        if reply is None:
            return  # the checker has counted it
        if kind == "STREAM":
            reply.seqs.append(payload.get("seq", -1))
        else:
            reply.dones.append(payload)
            if not reply.done.done():
                reply.done.set_result(None)
        self._check_watch()

    def _check_watch(self) -> None:
        if self._watch is None:
            return
        replies, seq, future = self._watch
        if all(r.ended or r.last_seq >= seq for r in replies):
            self._watch = None
            if not future.done():
                future.set_result(None)
