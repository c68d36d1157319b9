"""Raw WebSocket handshakes over a real socket, for tests that must see the bytes.

trio-websocket's client hides the response head, and cannot misbehave on
purpose; these helpers speak HTTP and WebSocket frames byte by byte (through
wsproto for the framing), so a test can check that a secret is not echoed, or
stop reading, or vanish half-way through a frame.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage


@dataclass
class Response:
    status: int
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def request_bytes(host: str, target: str = "/ws", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def raw_handshake(
    port: int, target: str = "/ws", headers: Sequence[tuple[str, str]] = ()
) -> Response:
    """Send one handshake; return the response head and (for a refusal) its body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request_bytes(f"127.0.0.1:{port}", target, headers))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            assert chunk, f"connection closed mid-response: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        if status != 101:
            while len(body) < length:
                chunk = await stream.receive_some()
                assert chunk
                body += chunk
        return Response(status, head, body[:length] if status != 101 else b"")


class RawClient:
    """A WebSocket client over a trio stream that reads only when told to."""

    def __init__(self, stream: trio.abc.Stream, host: str = "localhost") -> None:
        self.stream = stream
        self.host = host
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def handshake(self, target: str = "/ws") -> int:
        """Open the connection; return 101, or the HTTP status of the refusal."""
        await self.stream.send_all(self.ws.send(Request(host=self.host, target=target)))
        while True:
            self.ws.receive_data(await self.stream.receive_some())
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return 101
                if isinstance(event, RejectConnection):
                    return event.status_code

    def frame(self, message: dict[str, object] | str) -> bytes:
        text = message if isinstance(message, str) else json.dumps(message)
        return self.ws.send(TextMessage(data=text))

    async def send(self, message: dict[str, object] | str) -> None:
        await self.stream.send_all(self.frame(message))
