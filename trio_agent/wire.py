"""A raw protocol-v1 connection that keeps a transcript: for the demo and conformance checks.

It speaks the wire protocol with plain dicts, so a script can send exactly the
frames it means to, and it records every frame in both directions in order.
Every frame also goes through a :class:`~trio_agent.guarantees.GuaranteeChecker`,
and a broken guarantee is noted on the transcript line that revealed it, so a
report can show the frames around it. It never raises for what the server sends;
read :attr:`WireConnection.violations`.

This is a test and teaching tool. Applications use the Python client.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream

from .guarantees import GuaranteeChecker, Violation
from .protocol import parse_server_message

if TYPE_CHECKING:
    from .server import AgentServer

Frame = dict[str, Any]
Transport = Literal["memory", "lockstep", "socket"]


@dataclass(frozen=True)
class TranscriptLine:
    """One frame of the conversation, and the guarantees it was seen to break."""

    sent: bool
    frame: Frame
    violations: tuple[Violation, ...] = ()

    def __str__(self) -> str:
        line = f"{'->' if self.sent else '<-'} {summarize(self.frame)}"
        return line + "".join(f"   <-- {v}" for v in self.violations)


class WireConnection:
    """One client connection. Open it with :func:`open_wire`."""

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream) -> None:
        self.ws = ws
        self.stream = stream
        self.checker = GuaranteeChecker()
        self.transcript: list[TranscriptLine] = []
        self.session: Frame = {}
        self._ids = itertools.count()

    @property
    def violations(self) -> list[Violation]:
        return self.checker.violations

    def next_msg_id(self) -> str:
        return f"c{next(self._ids)}"

    async def send(self, frame: Frame) -> Frame:
        """Send one frame as JSON text. Cancellable; raises ``ConnectionClosed`` if closed."""
        self.checker.sent(frame)
        self.transcript.append(TranscriptLine(True, frame))
        await self.ws.send_message(json.dumps(frame))
        return frame

    async def receive(self) -> Frame:
        """Wait for the next frame and record it. Raises ``ConnectionClosed`` at the end.

        A frame that is not a valid protocol-v1 server message is recorded with a
        violation numbered 0 (the wire format itself).
        """
        raw = await self.ws.get_message()
        try:
            parse_server_message(raw)
        except ValueError as exc:
            frame: Frame = {"raw": str(raw)[:200]}
            broken = (Violation(0, f"not a valid server message: {str(exc)[:200]}"),)
            self.checker.violations.extend(broken)
            self.transcript.append(TranscriptLine(False, frame, broken))
            return frame
        frame = json.loads(raw)
        found = self.checker.received(frame)
        self.transcript.append(TranscriptLine(False, frame, tuple(found)))
        return frame

    async def receive_until(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        """Receive until a frame satisfies ``predicate``; return them all, it last."""
        frames = []
        while True:
            frame = await self.receive()
            frames.append(frame)
            if predicate(frame):
                return frames

    async def request(
        self,
        request_id: str,
        input: str = "",
        *,
        agent: str | None = None,
        timeout_s: float | None = None,
        options: dict[str, Any] | None = None,
    ) -> Frame:
        payload: Frame = {"input": input, "options": options or {}}
        if agent is not None:
            payload["agent"] = agent
        if timeout_s is not None:
            payload["timeout_s"] = timeout_s
        frame = {
            "msg_type": "REQUEST",
            "msg_id": self.next_msg_id(),
            "request_id": request_id,
            "payload": payload,
        }
        return await self.send(frame)

    async def interrupt(self, request_id: str | None = None, *, reason: str | None = None) -> str:
        """Send an INTERRUPT (``None``: all requests); return its ``msg_id``."""
        msg_id = self.next_msg_id()
        frame: Frame = {"msg_type": "INTERRUPT", "msg_id": msg_id}
        if request_id is not None:
            frame["request_id"] = request_id
        if reason is not None:
            frame["payload"] = {"reason": reason}
        await self.send(frame)
        return msg_id

    async def until_done(self, request_id: str) -> Frame:
        """Receive until the DONE of ``request_id``; return it."""
        frames = await self.receive_until(
            lambda f: f.get("msg_type") == "DONE" and f.get("request_id") == request_id
        )
        return frames[-1]

    async def until_ack(self, msg_id: str) -> Frame:
        """Receive until the INTERRUPT_ACK of ``msg_id``; return it."""
        frames = await self.receive_until(
            lambda f: f.get("msg_type") == "INTERRUPT_ACK" and f.get("ref") == msg_id
        )
        return frames[-1]

    def finish(self) -> list[Violation]:
        """Check what must hold once the conversation is over; return what broke."""
        broken = self.checker.finish()
        if broken:
            self.transcript.append(
                TranscriptLine(False, {"end": "conversation over"}, tuple(broken))
            )
        return broken

    def excerpt(self, around: int | None = None, *, context: int = 5) -> str:
        """Transcript lines around line ``around`` (default: the first with a violation)."""
        if around is None:
            around = next(
                (i for i, line in enumerate(self.transcript) if line.violations),
                len(self.transcript) - 1,
            )
        start = max(around - context, 0)
        lines = [
            f"  {i:>4} {self.transcript[i]}"
            for i in range(start, min(around + context + 1, len(self.transcript)))
        ]
        if start:
            lines.insert(0, f"       ... {start} earlier frames")
        return "\n".join(lines)


def summarize(frame: Frame) -> str:
    """One frame in a line: ``STREAM r1 seq=3``, ``DONE r1 interrupted frames=4``..."""
    kind = frame.get("msg_type")
    if kind is None:
        return str(frame.get("end") or frame.get("raw") or frame)
    rid = frame.get("request_id")
    payload = frame.get("payload") or {}
    parts = [str(kind)] + ([str(rid)] if rid else [])
    if kind == "REQUEST":
        parts.append(f"({frame.get('msg_id')}) agent={payload.get('agent')}")
        if "timeout_s" in payload:
            parts.append(f"timeout_s={payload['timeout_s']}")
    elif kind == "INTERRUPT":
        parts.append(f"({frame.get('msg_id')})" + ("" if rid else " all"))
    elif kind == "STREAM":
        parts.append(f"seq={payload.get('seq')}")
    elif kind == "DONE":
        parts.append(f"{payload.get('status')} frames={payload.get('frames')}")
        if payload.get("error"):
            parts.append(f"error={payload['error']}")
    elif kind == "INTERRUPT_ACK":
        parts.append(
            f"ref={frame.get('ref')} interrupted={payload.get('interrupted')}"
            + (f" targets={payload['targets']}" if payload.get("targets") else "")
        )
    elif kind == "ERROR":
        parts.append(f"{payload.get('code')}: {payload.get('message')}")
    return " ".join(parts)


@asynccontextmanager
async def open_wire(
    server: AgentServer, transport: Transport = "memory", *, serve_in: trio.Nursery | None = None
) -> AsyncIterator[WireConnection]:
    """Connect to ``server`` and read its SESSION frame.

    ``transport``: ``"memory"`` serves the connection in this task's nursery over
    in-memory streams (deterministic; works with ``trio.testing.MockClock``);
    ``"lockstep"`` is the same without any buffer, so the server's writer waits
    until the client reads (the client's pace *is* the backpressure);
    ``"socket"`` opens a loopback TCP connection to the listening server.

    The server side of a memory connection runs in ``serve_in`` if given, else
    in this connection's own nursery, which is then cancelled on exit and waits
    for the session to end: pass a nursery of yours to watch what the server
    does after the client has gone.

    On exit the connection is closed politely if it can be within a second, and
    dropped otherwise.
    """
    async with trio.open_nursery() as nursery:
        stream: trio.abc.Stream
        if transport == "socket":
            if server.port is None:
                raise RuntimeError(
                    "the server is not listening; start it with nursery.start(server.run)"
                )
            stream = await trio.open_tcp_stream(server.config.host, server.port)
        else:
            pair = (
                trio.testing.lockstep_stream_pair
                if transport == "lockstep"
                else trio.testing.memory_stream_pair
            )
            stream, server_stream = pair()
            (serve_in or nursery).start_soon(server.serve_stream, server_stream)
        # trio-websocket annotates this as taking a socket or TLS stream, but any
        # trio.abc.Stream works (its own tests use memory streams).
        ws = await wrap_client_stream(
            nursery,
            stream,  # type: ignore[arg-type]
            "localhost",
            server.config.path,
        )
        wire = WireConnection(ws, stream)
        try:
            wire.session = await wire.receive()
            yield wire
        finally:
            with trio.move_on_after(1):
                await ws.aclose()
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel(reason="wire connection closed")
