"""The soak's client side: one checked session on the server under soak, and the tally.

A :class:`Client` is a :class:`~trio_agent.testing.wire.WireConnection` (every
frame in both directions goes through the guarantee checker) that also counts
what it sends and receives on the shared :class:`Tally`, files each answer under
what it answers, and notes a broken guarantee on the tally instead of raising:
the soak reports violations, it does not stop at the first.
"""

from __future__ import annotations

import itertools
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from trio_agent.protocol.constants import (
    SUBPROTOCOL,
    TOKEN_QUERY_PARAMETER,
    TOKEN_SUBPROTOCOL_PREFIX,
)
from trio_agent.testing.wire import Frame, WireConnection, drain_until_closed, open_wire_stream

#: The limits the server is started with, which the behaviours probe.
SEND_TIMEOUT_S = 2.0
MAX_MESSAGE_BYTES = 65_536
MAX_INPUT_BYTES = 8_192
#: No behaviour may take longer than this (it would be a surprise).
OP_TIMEOUT_S = 30.0


@dataclass
class Tally:
    """What every client saw, counted together: the figures of the report."""

    counts: Counter[str] = field(default_factory=Counter)
    ack_ms: list[float] = field(default_factory=list)
    heartbeat_ms: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    surprises: list[str] = field(default_factory=list)
    #: The server's session ids of the sessions each attack opened (for their log bytes).
    attack_sessions: dict[str, list[str]] = field(default_factory=dict)

    def answer(self, attack: str, what: str) -> None:
        """Count what the server answered to ``attack`` (a close code, a status...)."""
        self.counts[f"attack {attack}: {what}"] += 1

    def breach(self, attack: str, what: str) -> None:
        """Count a bound that ``attack`` broke (the report shows each, and fails)."""
        self.counts[f"breach {attack}: {what}"] += 1

    def violation(self, what: str) -> None:
        """A broken guarantee seen by a behaviour itself (not by the checker)."""
        self.violations.append(what)

    def surprise(self, what: str) -> None:
        self.counts["surprises"] += 1
        if len(self.surprises) < 20:
            self.surprises.append(what)


class Client:
    """One session on the server under soak, every frame checked against the guarantees.

    It speaks through a :class:`WireConnection` and adds what the soak needs: counts
    on the tally, ids with a prefix per kind (``r`` requests, ``i`` interrupts...),
    and every answer filed under what it answers, so a behaviour can wait for one
    answer while others arrive first.
    """

    def __init__(self, wire: WireConnection, stream: trio.SocketStream, tally: Tally) -> None:
        self.wire = wire
        #: The TCP stream under the WebSocket, to :func:`reset` it.
        self.stream = stream
        self.tally = tally
        #: Answers by what they answer: DONE by request_id, the rest by ref.
        self.dones: dict[str, Frame] = {}
        self.answers: dict[str, Frame] = {}
        self._ids = itertools.count()

    def next_id(self, prefix: str = "c") -> str:
        return f"{prefix}{next(self._ids)}"

    async def send(self, frame: Frame) -> Frame:
        await self.wire.send(frame)
        self.tally.counts["frames sent"] += 1
        return frame

    async def send_bad(self, raw: str | bytes) -> None:
        await self.wire.send_raw(raw)
        self.tally.counts["frames sent"] += 1
        self.tally.counts["bad frames tried"] += 1

    async def recv(self) -> Frame:
        """The next frame, filed and counted; a broken guarantee goes on the tally."""
        return self.received(await self.wire.receive())

    def received(self, frame: Frame) -> Frame:
        """File and count ``frame``, just read by the connection."""
        if frame.get("msg_type") == "DONE":
            self.dones[frame["request_id"]] = frame
        elif frame.get("ref") is not None:
            self.answers[frame["ref"]] = frame
        self.tally.counts["frames received"] += 1
        self.tally.violations.extend(str(v) for v in self.wire.unreported_violations())
        return frame

    async def until(self, predicate: Callable[[Frame], bool]) -> Frame:
        while True:
            frame = await self.recv()
            if predicate(frame):
                return frame

    async def request(self, rid: str, words: int, words_per_s: float, agent: str = "lorem") -> None:
        await self.send(
            {
                "msg_type": "REQUEST",
                "msg_id": self.next_id(),
                "request_id": rid,
                "payload": {
                    "input": "soak",
                    "agent": agent,
                    "options": {"words": words, "words_per_s": words_per_s},
                },
            }
        )
        self.tally.counts["requests"] += 1

    async def interrupt(self, rid: str | None) -> str:
        msg_id = self.next_id("i")
        frame: Frame = {"msg_type": "INTERRUPT", "msg_id": msg_id}
        if rid is not None:
            frame["request_id"] = rid
        await self.send(frame)
        self.tally.counts["interrupts"] += 1
        return msg_id

    async def answer_to(self, msg_id: str) -> Frame:
        while msg_id not in self.answers:
            await self.recv()
        return self.answers[msg_id]

    async def done_of(self, rid: str) -> Frame:
        while rid not in self.dones:
            await self.recv()
        done = self.dones[rid]
        self.tally.counts[f"DONE {done['payload']['status']}"] += 1
        return done

    async def until_closed(self) -> int:
        """Receive until the server closes the connection; return the close code."""
        return await drain_until_closed(self.recv)

    def finish(self) -> None:
        """The conversation is over and everything was answered: check the end state."""
        self.tally.violations.extend(str(v) for v in self.wire.finish())


class Server:
    """Where the server under soak listens, and the token it wants.

    ``open_port`` is a second server's, started without a token (what DNS rebinding
    aims at); ``locks`` keep the heavy attacks one at a time.
    """

    def __init__(self, port: int, token: str, open_port: int | None = None) -> None:
        self.port = port
        self.token = token
        self.open_port = open_port
        self.locks: dict[str, trio.Lock] = {}

    def credentials(self, rng: random.Random) -> tuple[str, list[str], list[tuple[bytes, bytes]]]:
        """The token in one of its three places: (target, subprotocols, headers)."""
        how = rng.randrange(3)
        if how == 0:
            return "/ws", [], [(b"authorization", f"Bearer {self.token}".encode())]
        if how == 1:
            return f"/ws?{TOKEN_QUERY_PARAMETER}={self.token}", [], []
        return "/ws", [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + self.token], []


async def tcp(port: int, rcvbuf: int | None = None) -> trio.SocketStream:
    """A TCP connection to ``port`` on loopback; ``rcvbuf`` is set before connecting,
    so that the window is negotiated with it."""
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def reset(stream: trio.SocketStream) -> None:
    """Make the next close a TCP reset: the client vanishes, it does not say goodbye."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@asynccontextmanager
async def session(
    server: Server, tally: Tally, rng: random.Random, *, rcvbuf: int | None = None
) -> AsyncIterator[Client]:
    """A session with the token in a random one of its places; its SESSION frame is read.

    ``rcvbuf`` fixes the socket's receive buffer, for a client that means to stall.
    On exit the connection is closed politely within 2 s, else dropped.
    """
    stream = await tcp(server.port, rcvbuf)
    target, subprotocols, headers = server.credentials(rng)
    async with open_wire_stream(
        stream,
        target,
        host="127.0.0.1",
        subprotocols=subprotocols,
        headers=headers,
        max_message_size=1 << 24,
        close_timeout_s=2,
    ) as wire:
        tally.counts["sessions"] += 1
        client = Client(wire, stream, tally)
        session_frame = client.received(wire.session)
        assert session_frame["msg_type"] == "SESSION", session_frame
        yield client
