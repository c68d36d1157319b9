"""Raw wire for the soak's attacks: TCP from a chosen loopback address, hand-written
HTTP requests and the answers to them, WebSocket frames built byte by byte.

The attacks need what a well-behaved client library will not do: bytes that break
HTTP framing, handshakes with a bad key, fragments that never end, a client that
never reads. Every call here is bounded in time or in bytes, and talks to loopback
only (a source address may be any of 127.0.0.0/8, so that one attacker can be told
apart from the other clients of the soak, which all come from 127.0.0.1).
"""

from __future__ import annotations

import base64
import os
import socket
from dataclasses import dataclass, field

import trio


def websocket_key() -> str:
    """A valid Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode()


async def connect(
    port: int, *, source: str = "127.0.0.1", rcvbuf: int | None = None
) -> trio.SocketStream:
    """A TCP connection to ``port`` on 127.0.0.1 from ``source`` (a loopback address);
    ``rcvbuf`` is set before connecting, so that the window is negotiated with it."""
    sock = trio.socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def http_request(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]] = [],  # noqa: B006 (never mutated)
    body: bytes = b"",
) -> bytes:
    """One HTTP/1.1 request, written by hand (headers exactly as given, in order)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def handshake_request(
    target: str,
    host: str,
    headers: list[tuple[str, str]] = [],  # noqa: B006 (never mutated)
    keys: list[str] | None = None,
) -> bytes:
    """A WebSocket handshake, by hand: ``keys`` are the Sec-WebSocket-Key headers to
    send (one valid key when ``None``), so that a malformed one can be tried."""
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")]
    keys = [websocket_key()] if keys is None else keys
    return http_request(
        "GET", target, host, upgrade + [("Sec-WebSocket-Key", k) for k in keys] + headers
    )


@dataclass
class HttpAnswers:
    """What the server answered on one connection: each response's status, in order,
    and whether it closed the connection."""

    statuses: list[int] = field(default_factory=list)
    closed: bool = False
    #: The body of the first response (cut at 4 KiB), for its reason.
    first_body: bytes = b""
    #: Bytes after the last complete response (a WebSocket's first frames, after a 101).
    rest: bytes = b""


def parse_responses(data: bytes, answers: HttpAnswers) -> None:
    """Read the complete HTTP responses in ``data`` into ``answers``. A 101 ends the
    HTTP part: what follows it is WebSocket frames."""
    answers.statuses.clear()
    position = 0
    while True:
        end = data.find(b"\r\n\r\n", position)
        if end < 0:
            break
        head = data[position:end].split(b"\r\n")
        try:
            status = int(head[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            break
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or b"0")
        if status == 101:
            length = 0
        if end + 4 + length > len(data):
            break
        if not answers.statuses:
            answers.first_body = data[end + 4 : end + 4 + min(length, 4096)]
        answers.statuses.append(status)
        position = end + 4 + length
        if status == 101:
            break
    answers.rest = data[position:]


async def exchange(
    stream: trio.SocketStream, data: bytes, *, expect: int, wait_s: float
) -> HttpAnswers:
    """Send ``data``, then read until ``expect`` responses are complete, the server
    closes, or ``wait_s`` passes. A reset counts as a close."""
    answers = HttpAnswers()
    received = bytearray()
    try:
        await stream.send_all(data)
        with trio.move_on_after(wait_s):
            while len(received) < 16 << 20:
                chunk = await stream.receive_some(1 << 16)
                if not chunk:
                    answers.closed = True
                    break
                received += chunk
                parse_responses(bytes(received), answers)
                if len(answers.statuses) >= expect:
                    break
    except (trio.BrokenResourceError, OSError):
        answers.closed = True
    parse_responses(bytes(received), answers)
    return answers


async def one_exchange(
    port: int, data: bytes, *, expect: int = 1, wait_s: float = 5.0, source: str = "127.0.0.1"
) -> HttpAnswers:
    """Connect, :func:`exchange`, and close (with a reset, so that no TIME_WAIT piles up)."""
    stream = await connect(port, source=source)
    try:
        return await exchange(stream, data, expect=expect, wait_s=wait_s)
    finally:
        reset(stream)
        await trio.aclose_forcefully(stream)


def reset(stream: trio.SocketStream) -> None:
    """Make the next close a TCP reset: the client vanishes, it does not say goodbye."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


# -- WebSocket frames ---------------------------------------------------------------

TEXT, CONTINUATION, CLOSE, PING = 0x1, 0x0, 0x8, 0x9


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One client frame, masked with a zero key (valid, and the payload needs no XOR)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head.append(0x80 | size)
    elif size < 1 << 16:
        head.append(0x80 | 126)
        head += size.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += size.to_bytes(8, "big")
    return bytes(head) + b"\x00\x00\x00\x00" + payload


@dataclass
class ServerFrames:
    """The server's frames on a raw connection, parsed as they come: counts by opcode
    and the close code, if a close frame came."""

    buffer: bytes = b""
    counts: dict[int, int] = field(default_factory=dict)
    close_code: int | None = None
    #: Set when a close frame came, or the connection ended.
    ended: trio.Event = field(default_factory=trio.Event)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            opcode, size = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            start = 2
            if size == 126:
                size, start = int.from_bytes(self.buffer[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < start + size:
                return
            payload = self.buffer[start : start + size]
            self.buffer = self.buffer[start + size :]
            self.counts[opcode] = self.counts.get(opcode, 0) + 1
            if opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.ended.set()

    async def read(self, stream: trio.SocketStream) -> None:
        """Read and parse until the server closes (or resets) the connection."""
        try:
            while self.close_code is None:
                chunk = await stream.receive_some(1 << 16)
                if not chunk:
                    return
                self.feed(chunk)
        except (trio.BrokenResourceError, OSError):
            return
        finally:
            self.ended.set()
