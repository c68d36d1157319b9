"""A scripted server for client tests: the test itself sends and receives raw frames.

It can do what the real server never does (hold an ACK back, answer late, break
a guarantee on purpose), which is how the client's optimism, its timeouts and its
strict mode are tested. It speaks over in-memory streams, so it works with
``MockClock`` and is deterministic.

With ``resume=True`` it speaks protocol v1.2: its SESSION offers a resume token,
:meth:`FakeServer.open_stream` (give it to the client as ``open_stream``) opens a
new connection, :meth:`FakeServer.drop` drops the current one, and
:meth:`FakeServer.accept_resume` / :meth:`FakeServer.refuse_resume` answer the
client's RESUME; the test sends the replay itself (``stream``/``done``).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_server_stream

from trio_agent.protocol.audio import AudioHeader, encode_audio_frame, pcm_duration_ms

Frame = dict[str, Any]

#: The URL clients use with a fake server (only its path and host reach the fake).
FAKE_URL = "ws://fake.test/ws"


class FakeServer:
    """The server end of one connection, driven frame by frame by a test.

    :param send_session: send a SESSION frame as soon as the handshake is done.
    :param lockstep: use a lockstep stream pair: the client's writes block until
        the fake reads (the fake's WebSocket reader stops reading once one message
        waits to be received by the test).
    """

    def __init__(
        self,
        *,
        send_session: bool = True,
        lockstep: bool = False,
        session: Frame | None = None,
        resume: bool = False,
    ) -> None:
        self.send_session = send_session
        self.session = session if session is not None else session_payload()
        self.session_id = "fake-session"
        #: The resume token the fake expects next (``None``: it offers no resume).
        self.token: str | None = None
        if resume:
            self.token = "token-0"
            self.session = {
                **self.session,
                "protocol": "1.2",
                "resume": {"token": self.token, "window_s": 30},
            }
        #: How many connections the client opened (the first one included).
        self.connections = 1
        #: The connection whose RESUME was answered last (1: none yet).
        self._answered = 1
        self._changed = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._lockstep = lockstep
        self.ws: WebSocketConnection | None = None
        self.proposed_subprotocols: tuple[str, ...] = ()
        self.received: list[Frame] = []
        self.connected = trio.Event()
        self._ids = itertools.count()
        pair = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
        self.client_stream, self._server_stream = pair()

    async def serve(self) -> None:
        """Accept the client's handshake, send SESSION, then keep the connection
        until the test's nursery is cancelled."""
        await self._serve(self._server_stream, self.session_id)

    async def _serve(self, stream: trio.abc.Stream, session_id: str) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream)  # type: ignore[arg-type]
            self.proposed_subprotocols = tuple(request.proposed_subprotocols)
            self.ws = await request.accept(subprotocol="trio-agent.v1")
            if self.send_session:
                await self.send("SESSION", payload=self.session, session_id=session_id)
            self.connected.set()
            self._changed.unpark_all()
            await trio.sleep_forever()

    async def new_connection(self) -> None:
        """Wait until the client has opened a connection after the last one resumed
        and its SESSION is sent."""
        while self.connections <= self._answered or not self.connected.is_set():
            await self._changed.park()
        self._answered = self.connections

    # -- protocol v1.2: more connections, and resuming on them -------------------------

    async def open_stream(self) -> trio.abc.Stream:
        """Open a new connection (the client's ``open_stream``): its SESSION has a
        new session id; :attr:`ws` and :attr:`connected` are the new connection's."""
        assert self._nursery is not None, "start the fake with start_fake()"
        self.connections += 1
        self.connected = trio.Event()
        self.ws = None
        pair = (
            trio.testing.lockstep_stream_pair if self._lockstep else trio.testing.memory_stream_pair
        )
        client_stream, self._server_stream = pair()
        self._nursery.start_soon(
            self._serve, self._server_stream, f"{self.session_id}-{self.connections}"
        )
        return client_stream

    async def drop(self) -> None:
        """Drop the current connection with no close frame (the client sees 1006)."""
        await trio.aclose_forcefully(self._server_stream)

    async def close(self, code: int, reason: str = "") -> None:
        """Close the current connection with a close frame."""
        assert self.ws is not None
        await self.ws.aclose(code, reason)

    async def accept_resume(
        self,
        requests: dict[str, str] | None = None,
        interrupts: dict[str, list[str]] | None = None,
    ) -> Frame:
        """Wait for the new connection's RESUME, check its token, answer RESUMED
        (``requests`` default: every request in ``last_seq`` ``running``) with a new
        token, and return the RESUME. The test then sends the replay."""
        await self.new_connection()
        resume = await self.recv_type("RESUME")
        assert resume["session_id"] == self.session_id
        assert resume["payload"]["token"] == self.token
        assert self.token is not None
        self.token = f"token-{int(self.token.rsplit('-', 1)[1]) + 1}"
        if requests is None:
            requests = dict.fromkeys(resume["payload"].get("last_seq", {}), "running")
        await self.send(
            "RESUMED",
            ref=resume["msg_id"],
            payload={
                "requests": requests,
                "interrupts": interrupts or {},
                "resume": {"token": self.token, "window_s": 30},
            },
        )
        return resume

    async def refuse_resume(self, code: str) -> Frame:
        """Answer the RESUME with an ERROR ``code`` and close with 1008, as the
        server does for RESUME_UNKNOWN and RESUME_DENIED."""
        await self.new_connection()
        resume = await self.recv_type("RESUME")
        await self.error(code, f"refused: {code}", ref=resume["msg_id"])
        await self.close(1008, code)
        return resume

    async def send(self, msg_type: str, **fields: Any) -> Frame:
        frame = {
            "msg_type": msg_type,
            "msg_id": f"s{next(self._ids)}",
            "session_id": self.session_id,
            "ts": 0,
        }
        frame.update(fields)
        await self.send_raw(json.dumps(frame))
        return frame

    async def send_raw(self, raw: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send_message(raw)

    async def recv(self) -> Frame:
        assert self.ws is not None
        frame: Frame = json.loads(await self.ws.get_message())
        self.received.append(frame)
        return frame

    async def recv_type(self, msg_type: str) -> Frame:
        """Receive until a frame of ``msg_type`` (answering HEARTBEATs on the way)."""
        while True:
            frame = await self.recv()
            if frame["msg_type"] == msg_type:
                return frame
            if frame["msg_type"] == "HEARTBEAT":
                await self.heartbeat_reply(frame)

    # -- the frames a server sends ----------------------------------------------------

    async def stream(
        self, request_id: str, seq: int, delta: str, *, start_ms: float | None = None
    ) -> Frame:
        payload: Frame = {"seq": seq, "delta": delta}
        if start_ms is not None:
            payload["start_ms"] = start_ms
        return await self.send("STREAM", request_id=request_id, payload=payload)

    async def audio(
        self,
        request_id: str,
        seq: int,
        start_ms: float,
        samples: bytes,
        *,
        sample_rate: int = 16000,
        channels: int = 1,
    ) -> AudioHeader:
        """Send one AUDIO binary frame (protocol v1.1) and return its header."""
        header = AudioHeader(
            request_id=request_id,
            seq=seq,
            start_ms=start_ms,
            duration_ms=pcm_duration_ms(len(samples), sample_rate, channels),
            sample_rate=sample_rate,
            channels=channels,
        )
        await self.send_raw(encode_audio_frame(header, samples))
        return header

    async def done(
        self,
        request_id: str,
        frames: int,
        status: str = "completed",
        *,
        interrupted: bool = False,
        reason: str | None = None,
        **speech: Any,
    ) -> Frame:
        """A DONE; ``speech`` adds the fields of a spoken reply (``audio_ms``,
        ``heard_ms``, ``heard_text``)."""
        payload: Frame = {"status": status, "interrupted": interrupted, "frames": frames}
        if reason is not None:
            payload["reason"] = reason
        payload.update(speech)
        return await self.send("DONE", request_id=request_id, payload=payload)

    async def ack(
        self,
        ref: str,
        interrupted: list[str],
        *,
        targets: dict[str, str] | None = None,
        reason: str = "USER_NEW_INPUT",
    ) -> Frame:
        return await self.send(
            "INTERRUPT_ACK",
            ref=ref,
            payload={
                "interrupted": interrupted,
                "interrupted_count": len(interrupted),
                "reason": reason,
                "targets": targets or {},
            },
        )

    async def error(self, code: str, message: str, **fields: Any) -> Frame:
        return await self.send("ERROR", payload={"code": code, "message": message}, **fields)

    async def heartbeat_reply(self, heartbeat: Frame) -> Frame:
        return await self.send("HEARTBEAT", ref=heartbeat["msg_id"], payload={})


def session_payload() -> Frame:
    return {
        "protocol": "1.0",
        "server": "fake/0",
        "agents": {"lorem": {"description": "fake"}, "echo": {"description": "fake"}},
        "default_agent": "lorem",
        "limits": {
            "max_message_bytes": 1_048_576,
            "max_input_bytes": 65_536,
            "max_concurrent_requests": 8,
            "stream_lane_capacity": 32,
            "request_timeout_cap_s": 300.0,
            "idle_timeout_s": None,
        },
    }


def voice_session_payload() -> Frame:
    """A protocol v1.1 SESSION payload: the fake offers speech."""
    return {
        **session_payload(),
        "protocol": "1.1",
        "voices": ["builtin"],
        "default_voice": "builtin",
        "audio_formats": [{"format": "pcm_s16le", "sample_rate": 16000, "channels": 1}],
        "synthesizer": "builtin",
    }


def tone(ms: int, sample_rate: int = 16000) -> bytes:
    """``ms`` milliseconds of a quiet square wave, pcm_s16le mono."""
    period = max(2, sample_rate // 440)
    return b"".join(
        (1000 if (i // (period // 2)) % 2 else -1000).to_bytes(2, "little", signed=True)
        for i in range(sample_rate * ms // 1000)
    )


def start_fake(nursery: trio.Nursery, **options: Any) -> FakeServer:
    """Start a :class:`FakeServer` in ``nursery``; connect a client to it with
    ``open_agent_client(FAKE_URL, stream=fake.client_stream, ...)``."""
    fake = FakeServer(**options)
    fake._nursery = nursery
    nursery.start_soon(fake.serve)
    return fake
