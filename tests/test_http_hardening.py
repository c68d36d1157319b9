"""Plain HTTP against hostile clients: request smuggling shapes, pipelining and
request floods on one connection (over memory streams with a MockClock, so the
bounds are exact), and the protected ``/metrics``."""

from __future__ import annotations

import re

import trio
import trio.testing
from http_client import HttpClient, fetch, raw_exchange

from trio_agent import AgentServer, ServerConfig
from trio_agent.server.web.front import MAX_PIPELINED_REQUESTS, MAX_REQUESTS_PER_S

HOST = b"Host: 127.0.0.1\r\n"
METRICS_TOKEN = "m3trics-T0ken"


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


# ------------------------------------------------------- requests on one connection


async def serve_memory(server: AgentServer, nursery: trio.Nursery) -> trio.abc.Stream:
    client, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_side)
    return client


async def read_to_end(stream: trio.abc.Stream) -> bytes:
    reply = b""
    while chunk := await stream.receive_some():
        reply += chunk
    return reply


async def test_past_16_pipelined_requests_the_connection_gets_429_and_closes(
    nursery, autojump_clock
):
    server = AgentServer(ServerConfig(port=0))
    stream = await serve_memory(server, nursery)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n")
    assert statuses(await stream.receive_some()) == [b"200"]  # a first, ordinary request
    await stream.send_all((b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n") * 19)
    reply = await read_to_end(stream)  # the server closes the connection
    assert statuses(reply) == [b"200"] * (MAX_PIPELINED_REQUESTS + 1) + [b"429"]
    assert reply.endswith(b"more than 16 pipelined requests in a row\n")
    await server.wait_idle()


async def test_past_20_requests_in_a_second_the_connection_gets_429_and_closes(
    nursery, autojump_clock
):
    server = AgentServer(ServerConfig(port=0))
    client = HttpClient(await serve_memory(server, nursery))
    for _ in range(MAX_REQUESTS_PER_S):
        assert (await client.request("/healthz")).status == 200
    await trio.sleep(1.0)  # virtual: a new second, a new allowance
    for _ in range(MAX_REQUESTS_PER_S):
        assert (await client.request("/healthz")).status == 200
    refused = await client.request("/healthz")
    assert refused.status == 429
    assert refused.headers["connection"] == "close"
    assert refused.text == "more than 20 requests in one second on one connection\n"
    assert await read_to_end(client.stream) == b""
    await server.wait_idle()


# ------------------------------------------------------- /metrics


async def test_metrics_are_rendered_at_most_once_per_cache_period(start_server):
    server = await start_server()
    first = await fetch(server, "/metrics")
    second = await fetch(server, "/metrics")  # the counters (HTTP responses, CPU) moved
    assert first.status == second.status == 200
    assert first.body == second.body


async def test_the_metrics_cache_expires(nursery, autojump_clock):
    server = AgentServer(ServerConfig(port=0, metrics_cache_s=1.0))
    client = HttpClient(await serve_memory(server, nursery))
    first = await client.request("/metrics")
    await trio.sleep(0.9)
    assert (await client.request("/metrics")).body == first.body
    await trio.sleep(0.1)
    assert (await client.request("/metrics")).body != first.body


async def test_a_metrics_token_guards_metrics_only(start_server, log_records):
    server = await start_server(metrics_token=METRICS_TOKEN)
    refused = await fetch(server, "/metrics")
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="trio-agent metrics"'
    wrong = [("Authorization", "Bearer wrong")]
    assert (await fetch(server, "/metrics", headers=wrong)).status == 401
    two = [("Authorization", f"Bearer {METRICS_TOKEN}"), ("Authorization", "Bearer wrong")]
    assert (await fetch(server, "/metrics", headers=two)).status == 401
    right = [("Authorization", f"Bearer {METRICS_TOKEN}")]
    assert (await fetch(server, "/metrics", headers=right)).status == 200
    assert (await fetch(server, "/healthz")).status == 200
    assert (await fetch(server, "/readyz")).status == 200
    assert METRICS_TOKEN not in "".join(f"{r['message']}{r['extra']}" for r in log_records)
