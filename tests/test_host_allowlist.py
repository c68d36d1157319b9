"""DNS rebinding: without a token, only a Host the server can trust may reach it.

A page on ``rebind.evil.example`` whose name is rebound to 127.0.0.1 sends
``Host: rebind.evil.example:PORT`` and a matching ``Origin``, so the Origin rule alone
lets it in. The Host allow-list does not: an IP address literal, ``localhost``,
``*.localhost`` or a name given with ``--allow-host``. Over real sockets, WebSocket
and plain HTTP alike.
"""

from __future__ import annotations

import pytest
import trio
from trio_websocket import open_websocket_url

from trio_agent.server.admission import AdmissionPolicy, HandshakeFacts, Refuse, admit
from trio_agent.server.config import parse_config
from trio_agent.server.origins import host_is_allowed, parse_allowed_hosts

EVIL = "rebind.evil.example"
TOKEN = "s3cret-T0ken"


async def handshake(
    port: int, host: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """A WebSocket handshake with this ``Host``; the status and the body of a refusal."""
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            with trio.move_on_after(2):
                while chunk := await stream.receive_some():
                    body += chunk
        return status, body


async def http_status(port: int, host: str, target: str = "/healthz") -> tuple[int, bytes]:
    """One plain HTTP request with this ``Host``; the status and the body."""
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request.encode())
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# ------------------------------------------------------------------- over real sockets


async def test_a_rebound_name_with_a_matching_origin_is_refused_with_403(start_server, log_records):
    server = await start_server()
    status, body = await handshake(
        server.port, f"{EVIL}:{server.port}", {"Origin": f"http://{EVIL}:{server.port}"}
    )
    assert status == 403
    assert b"Host" in body
    assert b"--allow-host" in body
    assert server.sessions_total == 0
    refused = [r for r in log_records if r["message"] == "handshake refused"]
    assert refused
    assert "Host" in refused[0]["extra"]["why"]
    assert refused[0]["extra"]["host"] == f"{EVIL}:{server.port}"


@pytest.mark.parametrize(
    "target", ["/healthz", "/", "/metrics", "/static/agent-client.js", "/nowhere"]
)
async def test_plain_http_to_a_rebound_name_is_refused_with_403(start_server, log_records, target):
    server = await start_server()
    status, body = await http_status(server.port, f"{EVIL}:{server.port}", target)
    assert status == 403
    assert b"--allow-host" in body
    assert any(r["message"] == "HTTP request refused" for r in log_records)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "app.localhost", "LOCALHOST.:{port}"],
)
async def test_addresses_and_localhost_are_allowed(start_server, host):
    server = await start_server()
    host = host.format(port=server.port)
    assert (await handshake(server.port, host))[0] == 101
    assert (await http_status(server.port, host))[0] == 200


async def test_a_real_client_by_address_still_connects(start_server):
    server = await start_server()
    async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ws") as ws:
        assert "SESSION" in await ws.get_message()


async def test_allow_host_names_more_hosts(start_server):
    server = await start_server(allow_host=f"other.example, {EVIL}")
    assert (await handshake(server.port, f"{EVIL}:{server.port}"))[0] == 101
    assert (await http_status(server.port, EVIL))[0] == 200
    assert (await handshake(server.port, "third.example"))[0] == 403


async def test_allow_host_star_allows_any(start_server):
    server = await start_server(allow_host="*")
    assert (await handshake(server.port, f"{EVIL}:{server.port}"))[0] == 101
    assert (await http_status(server.port, EVIL))[0] == 200


async def test_with_a_token_any_host_is_allowed(start_server):
    server = await start_server(token=TOKEN)
    status, _ = await handshake(
        server.port, f"{EVIL}:{server.port}", {"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 101
    assert (await http_status(server.port, EVIL))[0] == 200


# ------------------------------------------------------------------- the pure rules


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8765", True),
        ("10.1.2.3:80", True),
        ("[::1]:8765", True),
        ("[::1]", True),
        ("[fe80::1%25eth0]:1", False),
        ("localhost", True),
        ("localhost:8765", True),
        ("app.localhost:8765", True),
        ("a.b.localhost", True),
        ("Localhost.", True),
        ("localhost.evil.example", False),
        ("evillocalhost", False),
        ("example.com", False),
        ("example.com:8765", False),
        ("2130706433", False),  # not how a browser writes an address: a name
        ("0x7f.1", False),
        ("::1", False),  # an IPv6 address in Host must be in brackets
        ("", False),
        ("127.0.0.1:notaport", False),
    ],
)
def test_host_is_allowed_without_a_list(host, allowed):
    assert host_is_allowed(host, frozenset()) is allowed


def test_allow_host_entries():
    allowed = parse_allowed_hosts("Example.COM, .corp.example")
    assert host_is_allowed("example.com:8765", allowed)
    assert not host_is_allowed("www.example.com", allowed)
    assert host_is_allowed("corp.example", allowed)
    assert host_is_allowed("a.corp.example:1", allowed)
    assert not host_is_allowed("evilcorp.example", allowed)
    assert host_is_allowed("anything", parse_allowed_hosts("*"))
    with pytest.raises(ValueError, match="allow-host"):
        parse_allowed_hosts("http://example.com")
    with pytest.raises(ValueError, match="allow-host"):
        parse_allowed_hosts("example.com:8765")


def test_allow_host_is_repeatable_and_comma_separated():
    config = parse_config(["--allow-host", "a.example", "--allow-host", "b.example,c.example"])
    assert parse_allowed_hosts(config.allow_host) == {"a.example", "b.example", "c.example"}
    with pytest.raises(ValueError, match="allow-host"):
        parse_config(["--allow-host", "a.example/path"])


def test_the_host_is_checked_before_the_origin_and_only_without_a_token():
    facts = HandshakeFacts(
        target="/ws", host=f"{EVIL}:8765", headers=[(b"origin", f"http://{EVIL}:8765".encode())]
    )
    refused = admit(facts, AdmissionPolicy(path="/ws"), draining=False, sessions=0)
    assert isinstance(refused, Refuse)
    assert refused.status == 403
    assert "Host" in refused.reason
    locked = admit(facts, AdmissionPolicy(path="/ws", token=TOKEN), draining=False, sessions=0)
    assert isinstance(locked, Refuse)
    assert locked.status == 401
