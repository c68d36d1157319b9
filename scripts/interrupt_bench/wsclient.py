"""The load generator's WebSocket client: RFC 6455 on asyncio protocol callbacks.

A benchmark must never measure its own client. So the load generator does the
least work per frame that a correct client can: bytes arrive in
:meth:`WebSocketClient.data_received` (a plain callback, no coroutine per frame),
every complete frame in the chunk is cut out with slicing, and each text message
goes to ``on_message(text, at)`` with the time it was read. Every server under
test is driven by this same client, so the comparison stays fair, and on this
machine it reads several times faster than any of the servers can write.

What it implements is what the servers send: unfragmented or fragmented text
messages, ping (answered with pong), close. No extensions are offered, so no
server compresses. Client frames are masked with a random key, as RFC 6455
requires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OnMessage = Callable[[str, float], None]


class HandshakeFailed(Exception):
    """The server did not answer the opening handshake with 101."""


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (RFC 6455, section 5.3)."""
    n = len(payload)
    if not n:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little"
    )


def encode_client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + key + _mask(payload, key)


class WebSocketClient(asyncio.Protocol):
    """One client connection. Use :func:`connect` to open it.

    ``on_message(text, at)`` is called for every text message, ``at`` being
    :func:`time.perf_counter` when the chunk holding its last byte was read.
    """

    def __init__(self, host: str, port: int, path: str, on_message: OnMessage) -> None:
        self._request_line = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        )
        self._key = base64.b64encode(os.urandom(16))
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.bytes_received = 0
        self._buffer = b""
        self._handshake_done = False
        self._fragments: list[bytes] = []

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = self._request_line + f"Sec-WebSocket-Key: {self._key.decode()}\r\n\r\n"
        transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or HandshakeFailed("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        at = time.perf_counter()
        self.bytes_received += len(data)
        buf = self._buffer + data if self._buffer else data
        if not self._handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buf
                return
            if not self._check_handshake(buf[:end]):
                return
            buf = buf[end + 4 :]
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if size - pos < head + length:
                break
            payload = buf[pos + head : pos + head + length]
            if masked:
                payload = _mask(payload, buf[pos + head - 4 : pos + head])
            pos += head + length
            self._frame(b0, payload, at)
        self._buffer = buf[pos:]

    # -- frames ----------------------------------------------------------------------

    def _check_handshake(self, head: bytes) -> bool:
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if " 101 " not in f"{status} ":
            failure = HandshakeFailed(status)
        elif headers.get("sec-websocket-accept") != expected:
            failure = HandshakeFailed("bad Sec-WebSocket-Accept")
        else:
            self._handshake_done = True
            self.opened.set_result(None)
            return True
        self.opened.set_exception(failure)
        assert self.transport is not None
        self.transport.close()
        return False

    def _frame(self, b0: int, payload: bytes, at: float) -> None:
        opcode = b0 & 0x0F
        if opcode == 0x1 and b0 & 0x80:
            self.on_message(payload.decode(), at)
        elif opcode in (0x0, 0x1):
            self._fragments.append(payload)
            if b0 & 0x80:
                text = b"".join(self._fragments).decode()
                self._fragments.clear()
                self.on_message(text, at)
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(encode_client_frame(0x8, payload[:2]))
                self.transport.close()
            if not self.closed.done():
                self.closed.set_result(code)
        elif opcode == 0x9 and self.transport is not None:
            self.transport.write(encode_client_frame(0xA, payload))
        # pong and binary messages: nothing to do (no server under test sends binary)

    # -- sending ---------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Write one text message. Synchronous: asyncio buffers what the socket refuses."""
        assert self.transport is not None
        self.transport.write(encode_client_frame(0x1, text.encode()))

    def pause_reading(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    async def close(self, limit_s: float = 2.0) -> None:
        """Send a close frame and wait (bounded) for the server's."""
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(encode_client_frame(0x8, struct.pack("!H", 1000)))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), limit_s)
        except TimeoutError:
            pass
        finally:
            self.transport.close()


async def connect(
    host: str, port: int, path: str, on_message: OnMessage, *, receive_buffer: int | None = None
) -> WebSocketClient:
    """Open a connection and complete the opening handshake.

    ``receive_buffer`` fixes the socket's receive buffer (``SO_RCVBUF``, set before
    connecting so the TCP window is negotiated with it) instead of letting the
    kernel grow it: how much a client that stops reading can hold is then the same
    whatever server it talks to.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    _, client = await loop.create_connection(
        lambda: WebSocketClient(host, port, path, on_message), sock=sock
    )
    await client.opened
    return client
