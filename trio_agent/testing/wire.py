"""A raw protocol-v1 connection that keeps a transcript: for tests, checks, the demo, the soak.

Plain dicts on the wire, every frame checked against the guarantees and recorded;
:class:`WireClient` asserts instead. A test and teaching tool: applications use
the Python client. ``docs/testing.md`` explains its use.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from trio_agent.protocol.audio import decode_audio_frame
from trio_agent.protocol.guarantees import GuaranteeChecker, Violation
from trio_agent.protocol.messages import ProtocolError, parse_server_message
from trio_agent.testing.transcript import AudioFrame, Frame, TranscriptLine, summarize

if TYPE_CHECKING:
    from trio_agent.server.agent_server import AgentServer

Transport = Literal["memory", "lockstep", "socket"]

__all__ = [
    "AudioFrame",
    "Frame",
    "TranscriptLine",
    "Transport",
    "WireClient",
    "WireConnection",
    "audio_frame",
    "collect_until",
    "connect",
    "drain_until_closed",
    "only",
    "open_wire",
    "open_wire_stream",
    "open_wire_url",
    "summarize",
]


class WireConnection:
    """One client connection. Open it with :func:`open_wire` (or :func:`open_wire_stream`).

    ``stream`` is the byte stream under ``ws``, for a script that wants to drop the
    connection abruptly; a connection made on a WebSocket opened elsewhere may go
    without it.
    """

    def __init__(self, ws: WebSocketConnection, stream: trio.abc.Stream | None = None) -> None:
        self.ws = ws
        self._stream = stream
        self.checker = GuaranteeChecker()
        self.transcript: list[TranscriptLine] = []
        self.session: Frame = {}
        #: Every AUDIO frame received so far, in order, whichever method read it.
        self.audio: list[AudioFrame] = []
        self._ids = itertools.count()
        self._reported = 0

    @property
    def stream(self) -> trio.abc.Stream:
        """The byte stream under the WebSocket. Raises ``RuntimeError`` if it was not given."""
        if self._stream is None:
            raise RuntimeError("this connection was made on a WebSocket opened elsewhere")
        return self._stream

    @property
    def violations(self) -> list[Violation]:
        return self.checker.violations

    def unreported_violations(self) -> list[Violation]:
        """The violations seen since the last call (all of them, the first time)."""
        found = self.checker.violations[self._reported :]
        self._reported += len(found)
        return found

    def next_msg_id(self) -> str:
        return f"c{next(self._ids)}"

    async def send(self, frame: Frame) -> Frame:
        """Send one frame as JSON text. Cancellable; raises ``ConnectionClosed`` if closed."""
        self.checker.sent(frame)
        self.transcript.append(TranscriptLine(True, frame))
        await self.ws.send_message(json.dumps(frame))
        return frame

    async def send_raw(self, raw: str | bytes) -> None:
        """Send ``raw`` as one WebSocket message, unchecked and off the transcript: for
        frames that are meant to be invalid. Cancellable; raises ``ConnectionClosed``."""
        await self.ws.send_message(raw)

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
        return await collect_until(self.receive, predicate)

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

    async def heartbeat(self) -> str:
        """Send a HEARTBEAT; return its ``msg_id``."""
        msg_id = self.next_msg_id()
        await self.send({"msg_type": "HEARTBEAT", "msg_id": msg_id})
        return msg_id

    async def until_closed(self) -> int:
        """Receive until the server closes the connection; return the close code
        (-1 if the connection ended without one). Cancellable."""
        return await drain_until_closed(self.receive_message)

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


async def collect_until(
    receive: Callable[[], Awaitable[Frame]], predicate: Callable[[Frame], bool]
) -> list[Frame]:
    """Await ``receive()`` until it returns a frame that satisfies ``predicate``;
    return every frame it returned, that one last. Cancellable: the frames read so
    far stay recorded by whoever ``receive`` belongs to."""
    frames = []
    while True:
        frame = await receive()
        frames.append(frame)
        if predicate(frame):
            return frames


async def drain_until_closed(receive: Callable[[], Awaitable[object]]) -> int:
    """Await ``receive()`` until the connection closes; return the close code (-1 if
    it ended without one). Cancellable."""
    try:
        while True:
            await receive()
    except ConnectionClosed as closed:
        return closed.reason.code if closed.reason is not None else -1


@asynccontextmanager
async def open_wire_stream(
    stream: trio.abc.Stream,
    target: str,
    *,
    host: str = "localhost",
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[bytes, bytes]] = (),
    max_message_size: int = 2**20,
    close_timeout_s: float = 1.0,
) -> AsyncIterator[WireConnection]:
    """Open a WebSocket to ``target`` (path and query) over ``stream``, which is
    already connected, and read the SESSION frame.

    ``host``, ``subprotocols`` and ``headers`` shape the handshake (the token can go
    in any of them); ``max_message_size`` is the largest message it accepts
    (trio-websocket's default, 1 MiB, unless given).

    On exit the connection is closed politely if it can be within
    ``close_timeout_s``, and dropped otherwise; the stream is closed either way.
    A cancelled handshake or SESSION wait closes the stream too.
    """
    async with trio.open_nursery() as nursery:
        try:
            # trio-websocket annotates this as taking a socket or TLS stream, but any
            # trio.abc.Stream works (its own tests use memory streams).
            ws = await wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]
                host,
                target,
                subprotocols=list(subprotocols),
                extra_headers=list(headers),
                max_message_size=max_message_size,
            )
            wire = WireConnection(ws, stream)
            try:
                wire.session = await wire.receive()
                yield wire
            finally:
                with trio.move_on_after(close_timeout_s):
                    await ws.aclose()
        finally:
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel(reason="wire connection closed")


@asynccontextmanager
async def open_wire_url(url: str) -> AsyncIterator[WireConnection]:
    """Connect over TCP to the server at ``url`` (``ws://host:port/path?query``, as
    ``AgentServer.url`` gives it) and read its SESSION frame: for a script whose
    server runs in another process. Closed on exit as by :func:`open_wire_stream`."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
        raise ValueError(f"not a ws://host:port/ URL: {url!r}")
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with open_wire_stream(stream, target, host=parts.hostname) as wire:
        yield wire


@asynccontextmanager
async def open_wire(
    server: AgentServer,
    transport: Transport = "memory",
    *,
    serve_in: trio.Nursery | None = None,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[bytes, bytes]] = (),
    target: str | None = None,
    close_timeout_s: float = 1.0,
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

    ``subprotocols``, ``headers`` and ``target`` (path and query; the server's
    path by default) shape the handshake, as in :func:`open_wire_stream`, which
    also says how the connection is closed on exit.
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
        try:
            async with open_wire_stream(
                stream,
                target or server.config.path,
                subprotocols=subprotocols,
                headers=headers,
                close_timeout_s=close_timeout_s,
            ) as wire:
                yield wire
        finally:
            nursery.cancel_scope.cancel(reason="wire connection closed")


# --------------------------------------------------------------------------- for tests


class WireClient:
    """A :class:`WireConnection` seen through methods that assert: the frame-level
    test client.

    Behaviour tests use the real client, :mod:`trio_agent.client.connection`. This
    one is for the tests that must send invalid frames, which the real client never
    would, or look at the exact order of frames on the wire, which the real client
    hides. :meth:`recv` fails the test at the first frame that breaks a guarantee
    (or is not a valid server message), so any test that drives a conversation
    also checks the guarantees on it. Every frame comes back as a dict, AUDIO ones
    too (see :func:`audio_frame`), and :attr:`received` keeps them all in order.
    """

    def __init__(self, ws: WebSocketConnection | WireConnection) -> None:
        self.wire = ws if isinstance(ws, WireConnection) else WireConnection(ws)
        self.received: list[Frame] = [self.wire.session] if self.wire.session else []

    @property
    def ws(self) -> WebSocketConnection:
        return self.wire.ws

    @property
    def stream(self) -> trio.abc.Stream:
        return self.wire.stream

    @property
    def checker(self) -> GuaranteeChecker:
        return self.wire.checker

    @property
    def session(self) -> Frame:
        return self.wire.session

    @property
    def session_id(self) -> str:
        return str(self.session["session_id"])

    async def start(self) -> WireClient:
        """Read the SESSION frame, unless it was read already; return this client."""
        if not self.session:
            self.wire.session = await self.recv()
        assert not self.wire.violations, self.wire.violations
        assert self.session["msg_type"] == "SESSION", self.session
        return self

    async def send(self, frame: Frame) -> Frame:
        return await self.wire.send(frame)

    async def send_raw(self, raw: str | bytes) -> None:
        await self.wire.send_raw(raw)

    async def recv(self) -> Frame:
        """The next frame, text or AUDIO. Asserts that it broke no guarantee."""
        message = await self.wire.receive_message()
        frame = audio_frame(message) if isinstance(message, AudioFrame) else message
        self.received.append(frame)
        violations = list(self.wire.transcript[-1].violations)
        assert not violations, f"{violations} in {frame}"
        return frame

    async def recv_until(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        """Receive frames until one satisfies ``predicate``; return them all (it last)."""
        return await collect_until(self.recv, predicate)

    async def request(
        self,
        request_id: str,
        input: str = "hello",
        *,
        agent: str | None = "lorem",
        timeout_s: float | None = None,
        **options: Any,
    ) -> Frame:
        return await self.wire.request(
            request_id, input, agent=agent, timeout_s=timeout_s, options=options
        )

    async def interrupt(self, request_id: str | None = None, reason: str | None = None) -> str:
        return await self.wire.interrupt(request_id, reason=reason)

    async def heartbeat(self) -> str:
        return await self.wire.heartbeat()

    async def until_closed(self) -> int:
        """Receive (and check) until the server closes the connection; return the close code."""
        return await drain_until_closed(self.recv)

    async def until_done(self, request_id: str) -> list[Frame]:
        return await self.recv_until(
            lambda f: f["msg_type"] == "DONE" and f["request_id"] == request_id
        )

    async def until_ack(self, msg_id: str) -> list[Frame]:
        return await self.recv_until(
            lambda f: f["msg_type"] == "INTERRUPT_ACK" and f["ref"] == msg_id
        )

    def assert_guarantees(self) -> None:
        violations = self.wire.finish()
        assert not violations, violations


def audio_frame(audio: AudioFrame) -> Frame:
    """An AUDIO frame as a dict: its header's fields, plus ``samples`` (the bytes) and
    ``received_at`` (``trio.current_time()`` when this is called, as it is on reading)."""
    return {
        **audio.header.model_dump(),
        "samples": audio.samples,
        "received_at": trio.current_time(),
    }


def only(frames: list[Frame], msg_type: str, request_id: str | None = None) -> list[Frame]:
    """The frames of ``msg_type`` (and of ``request_id``, if given), in order."""
    return [
        f
        for f in frames
        if f["msg_type"] == msg_type and (request_id is None or f.get("request_id") == request_id)
    ]


@asynccontextmanager
async def connect(
    server: AgentServer,
    transport: str = "memory",
    *,
    lockstep: bool = False,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[bytes, bytes]] = (),
    target: str | None = None,
) -> AsyncIterator[WireClient]:
    """Connect a :class:`WireClient` to ``server``: :func:`open_wire`, for tests.

    ``transport`` is ``"memory"`` (``lockstep=True`` removes all buffering, so the
    server's writer blocks until the client reads) or ``"socket"``. The client owns
    the raw stream (``client.stream``) so a test can drop it abruptly.
    """
    wire_transport: Transport = (
        "socket" if transport != "memory" else "lockstep" if lockstep else "memory"
    )
    async with open_wire(
        server,
        wire_transport,
        subprotocols=subprotocols,
        headers=headers,
        target=target,
        close_timeout_s=2,
    ) as wire:
        yield await WireClient(wire).start()
