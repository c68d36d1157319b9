"""Plain HTTP against hostile clients, over real sockets: request smuggling shapes,
pipelining and request floods on one connection, and the protected ``/metrics``."""

from __future__ import annotations

import re

import trio
from http_client import raw_exchange

HOST = b"Host: 127.0.0.1\r\n"


def statuses(reply: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)


# ------------------------------------------------------- Content-Length with Transfer-Encoding


async def test_content_length_with_transfer_encoding_is_400_and_the_connection_closes(
    start_server,
):
    """RFC 9112, section 6.3: such a request is an error and the connection must close,
    so a second request hidden in its body (here a GET /metrics) is never answered."""
    server = await start_server(handshake_timeout_s=2)
    smuggled = b"GET /metrics HTTP/1.1\r\n" + HOST + b"\r\n"
    request = (
        b"GET /healthz HTTP/1.1\r\n"
        + HOST
        + f"Content-Length: {len(smuggled)}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + smuggled
    )
    with trio.fail_after(5):
        reply = await raw_exchange(server, request)
    assert statuses(reply) == [b"400"]
    assert b"connection: close" in reply.lower()
    assert b"Transfer-Encoding" in reply  # the reason, in the body


async def test_transfer_encoding_alone_still_works(start_server):
    server = await start_server()
    reply = await raw_exchange(
        server,
        b"GET /healthz HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n0\r\n\r\n",
    )
    assert statuses(reply) == [b"200"]
