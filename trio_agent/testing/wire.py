"""A raw protocol-v1 connection that keeps a transcript: for the demo and conformance checks.

It speaks the wire protocol with plain dicts, so a script can send exactly the
frames it means to, and it records every frame in both directions in order.
Every frame also goes through a :class:`~trio_agent.protocol.guarantees.GuaranteeChecker`,
and a broken guarantee is noted on the transcript line that revealed it, so a
report can show the frames around it. It never raises for what the server sends;
read :attr:`WireConnection.violations`.

Spoken replies (protocol v1.1) arrive as binary AUDIO messages, which are
decoded with :func:`~trio_agent.protocol.audio.decode_audio_frame` into :class:`AudioFrame`
values (the header and the ``pcm_s16le`` samples).
:meth:`WireConnection.receive_message` returns every message in order, text
frames as dicts and AUDIO as :class:`AudioFrame`. :meth:`WireConnection.receive`
and the helpers built on it (``receive_until``, ``until_done``, ``until_ack``)
return text frames only, as they always have: an AUDIO frame that comes first is
still checked, put on the transcript (as its header) and kept in
:attr:`WireConnection.audio`, but not returned, so a script that never asks for
speech, or does not care about the samples, reads exactly what it did before. A
binary message that is not a well-formed AUDIO frame is recorded like an invalid
text frame: a dict ``{"raw": ...}`` with a violation numbered 0.

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

from trio_agent.protocol.audio import AudioHeader, decode_audio_frame
from trio_agent.protocol.guarantees import GuaranteeChecker, Violation
from trio_agent.protocol.messages import ProtocolError, parse_server_message

if TYPE_CHECKING:
    from trio_agent.server.agent_server import AgentServer

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


@dataclass(frozen=True)
class AudioFrame:
    """One AUDIO binary message (protocol v1.1), decoded: its header and its samples."""

    header: AudioHeader
    #: The raw ``pcm_s16le`` samples, interleaved if the header has several channels.
    samples: bytes

    @property
    def request_id(self) -> str:
        return self.header.request_id

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def start_ms(self) -> float:
        return self.header.start_ms

    @property
    def duration_ms(self) -> float:
        return self.header.duration_ms


class WireConnection:
    """One client connection. Open it with :func:`open_wire`."""

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream) -> None:
        self.ws = ws
        self.stream = stream
        self.checker = GuaranteeChecker()
        self.transcript: list[TranscriptLine] = []
        self.session: Frame = {}
        #: Every AUDIO frame received so far, in order, whichever method read it.
        self.audio: list[AudioFrame] = []
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
        """Wait for the next *text* frame and record it. Raises ``ConnectionClosed`` at the end.

        AUDIO frames before it are received, checked and recorded as by
        :meth:`receive_message` (they end up in :attr:`audio`), and passed over.
        A frame that is not a valid protocol-v1 server message is recorded with a
        violation numbered 0 (the wire format itself) and returned as ``{"raw": ...}``.
        """
        while True:
            message = await self.receive_message()
            if not isinstance(message, AudioFrame):
                return message

    async def receive_message(self) -> Frame | AudioFrame:
        """Wait for the next message, text or binary, and record it. Raises
        ``ConnectionClosed`` at the end.

        A text frame is returned as its dict; an AUDIO binary frame as an
        :class:`AudioFrame` (its header goes on the transcript and through the
        guarantee checker, as a STREAM frame would). Anything that does not decode
        is recorded with a violation numbered 0 and returned as ``{"raw": ...}``.

        Cancellable: a cancelled wait loses no message (trio-websocket keeps it
        queued, and a message is recorded in the same step it is read).
        """
        raw = await self.ws.get_message()
        if isinstance(raw, bytes):
            return self._received_binary(raw)
        try:
            parse_server_message(raw)
        except ValueError as exc:
            return self._malformed(raw, f"not a valid server message: {str(exc)[:200]}")
        frame: Frame = json.loads(raw)
        found = self.checker.received(frame)
        self.transcript.append(TranscriptLine(False, frame, tuple(found)))
        return frame

    def _received_binary(self, raw: bytes) -> Frame | AudioFrame:
        try:
            header, samples = decode_audio_frame(raw)
        except ProtocolError as exc:
            return self._malformed(
                f"binary, {len(raw)} bytes: {raw[:64]!r}",
                f"not a valid AUDIO frame: {str(exc)[:200]}",
            )
        audio = AudioFrame(header, samples)
        frame = header.model_dump()
        found = self.checker.received(frame)
        self.transcript.append(TranscriptLine(False, frame, tuple(found)))
        self.audio.append(audio)
        return audio

    def _malformed(self, raw: str, problem: str) -> Frame:
        frame: Frame = {"raw": raw[:200]}
        broken = (Violation(0, problem),)
        self.checker.violations.extend(broken)
        self.transcript.append(TranscriptLine(False, frame, broken))
        return frame

    async def receive_until(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        """Receive text frames until one satisfies ``predicate``; return them all, it
        last (AUDIO frames on the way go to :attr:`audio`)."""
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
    """One frame in a line: ``STREAM r1 seq=3``, ``DONE r1 interrupted frames=4``,
    ``AUDIO r1 seq=2 start_ms=40.0 duration_ms=20.0``..."""
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
    elif kind == "AUDIO":
        parts.append(
            f"seq={frame.get('seq')} start_ms={frame.get('start_ms')}"
            f" duration_ms={frame.get('duration_ms')}"
        )
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
