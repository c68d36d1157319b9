"""A raw protocol-v1 test client: sends dicts, receives dicts, checks every guarantee.

Behaviour tests use the real client, :mod:`trio_agent.client.connection` (see
``test_client.py``). This raw client stays for the frame-level tests: those that
must send invalid frames, which the real client never would, or look at the exact
order of frames on the wire, which the real client hides. Every frame in either
direction goes through a :class:`~trio_agent.protocol.guarantees.GuaranteeChecker`, so
any test that drives a conversation also checks guarantees 1-7 on it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from trio_agent import AgentServer
from trio_agent.protocol.audio import decode_audio_frame
from trio_agent.protocol.guarantees import GuaranteeChecker

Frame = dict[str, Any]


class WireClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.checker = GuaranteeChecker()
        self.session: Frame = {}
        self.received: list[Frame] = []
        self.stream: trio.abc.Stream | None = None
        self._ids = itertools.count()

    @property
    def session_id(self) -> str:
        return str(self.session["session_id"])

    async def start(self) -> WireClient:
        self.session = await self.recv()
        assert self.session["msg_type"] == "SESSION", self.session
        return self

    async def send(self, frame: Frame) -> Frame:
        self.checker.sent(frame)
        await self.ws.send_message(json.dumps(frame))
        return frame

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send_message(raw)

    async def recv(self) -> Frame:
        raw = await self.ws.get_message()
        frame: Frame = audio_frame(raw) if isinstance(raw, bytes) else json.loads(raw)
        self.received.append(frame)
        violations = self.checker.received(frame)
        assert not violations, f"{violations} in {frame}"
        return frame

    async def recv_until(self, predicate: Callable[[Frame], bool]) -> list[Frame]:
        """Receive frames until one satisfies ``predicate``; return them all (it last)."""
        frames = []
        while True:
            frame = await self.recv()
            frames.append(frame)
            if predicate(frame):
                return frames

    async def request(
        self,
        request_id: str,
        input: str = "hello",
        *,
        agent: str | None = "lorem",
        timeout_s: float | None = None,
        **options: Any,
    ) -> Frame:
        payload: Frame = {"input": input, "options": options}
        if agent is not None:
            payload["agent"] = agent
        if timeout_s is not None:
            payload["timeout_s"] = timeout_s
        return await self.send(
            {
                "msg_type": "REQUEST",
                "msg_id": f"c{next(self._ids)}",
                "request_id": request_id,
                "payload": payload,
            }
        )

    async def interrupt(self, request_id: str | None = None, reason: str | None = None) -> str:
        msg_id = f"c{next(self._ids)}"
        frame: Frame = {"msg_type": "INTERRUPT", "msg_id": msg_id}
        if request_id is not None:
            frame["request_id"] = request_id
        if reason is not None:
            frame["payload"] = {"reason": reason}
        await self.send(frame)
        return msg_id

    async def heartbeat(self) -> str:
        msg_id = f"c{next(self._ids)}"
        await self.send({"msg_type": "HEARTBEAT", "msg_id": msg_id})
        return msg_id

    async def until_closed(self) -> int:
        """Receive until the server closes the connection; return the close code."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed as closed:
            return closed.reason.code if closed.reason is not None else -1

    async def until_done(self, request_id: str) -> list[Frame]:
        return await self.recv_until(
            lambda f: f["msg_type"] == "DONE" and f["request_id"] == request_id
        )

    async def until_ack(self, msg_id: str) -> list[Frame]:
        return await self.recv_until(
            lambda f: f["msg_type"] == "INTERRUPT_ACK" and f["ref"] == msg_id
        )

    def assert_guarantees(self) -> None:
        violations = self.checker.finish()
        assert not violations, violations


def audio_frame(raw: bytes) -> Frame:
    """A binary AUDIO message as a frame dict: its header's fields, plus ``samples``
    (the bytes) and ``received_at`` (``trio.current_time()`` when it was read)."""
    header, samples = decode_audio_frame(raw)
    return {**header.model_dump(), "samples": samples, "received_at": trio.current_time()}


def only(frames: list[Frame], msg_type: str, request_id: str | None = None) -> list[Frame]:
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
    """Connect a :class:`WireClient` to ``server``.

    ``transport`` is ``"memory"`` (in-memory streams: deterministic, works with
    MockClock; ``lockstep=True`` removes all buffering, so the server's writer blocks
    until the client reads) or ``"socket"`` (a real loopback TCP connection). The
    client owns the raw stream (``client.stream``) so a test can drop it abruptly.
    ``subprotocols``, ``headers`` and ``target`` (path and query) shape the handshake.
    """
    async with trio.open_nursery() as nursery:
        stream: trio.abc.Stream
        if transport == "memory":
            pair = (
                trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
            )
            stream, server_stream = pair()
            nursery.start_soon(server.serve_stream, server_stream)
        else:
            assert server.port is not None
            stream = await trio.open_tcp_stream(server.config.host, server.port)
        ws = await wrap_client_stream(
            nursery,
            stream,
            "test",
            target or server.config.path,
            subprotocols=subprotocols,
            extra_headers=list(headers),
        )
        client = WireClient(ws)
        client.stream = stream
        try:
            yield await client.start()
        finally:
            with trio.move_on_after(2):
                await ws.aclose()
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
