"""One address cannot take every session: ``--max-sessions-per-address``, over real
sockets, and the client address behind a trusted proxy (``--trust-forwarded-for``)."""

from __future__ import annotations

import ipaddress

from handshakes import raw_handshake

from trio_agent.server.admission import AdmissionPolicy, HandshakeFacts
from trio_agent.server.origins import parse_trusted_proxies
from trio_agent.testing.wire import connect


def forwarded(address: str) -> list[tuple[str, str]]:
    return [("X-Forwarded-For", address)]


async def test_past_the_limit_one_address_gets_503_and_others_are_unaffected(
    start_server, log_records
):
    server = await start_server(max_sessions_per_address=2)
    async with connect(server, "socket"), connect(server, "socket"):
        refused = await raw_handshake(server.port)
        assert refused.status == 503
        assert refused.body == b"too many sessions from your address (2)\n"
        assert server.stats()["sessions"] == 2
        lines = [r for r in log_records if r["message"] == "handshake refused"]
        assert lines[-1]["extra"]["client"] == "127.0.0.1"
    await server.wait_idle()
    assert (await raw_handshake(server.port)).status == 101  # a session ended: room again


async def test_zero_turns_the_limit_off(start_server):
    server = await start_server(max_sessions_per_address=0)
    async with connect(server, "socket"), connect(server, "socket"):
        assert (await raw_handshake(server.port)).status == 101


async def test_behind_a_trusted_proxy_the_forwarded_address_counts(start_server):
    server = await start_server(max_sessions_per_address=1, trust_forwarded_for="127.0.0.0/8")
    async with connect(server, "socket", headers=[(b"X-Forwarded-For", b"10.0.0.1")]):
        assert (await raw_handshake(server.port, headers=forwarded("10.0.0.1"))).status == 503
        assert (await raw_handshake(server.port, headers=forwarded("10.0.0.2"))).status == 101
        # The proxy appends the address it saw: the rightmost entry is the one to believe.
        spoofed = forwarded("10.0.0.3, 10.0.0.1")
        assert (await raw_handshake(server.port, headers=spoofed)).status == 503
        assert (
            await raw_handshake(server.port, headers=forwarded("10.0.0.1, 10.0.0.3"))
        ).status == 101


async def test_without_trust_the_forwarded_header_is_ignored(start_server):
    server = await start_server(max_sessions_per_address=1)
    async with connect(server, "socket", headers=[(b"X-Forwarded-For", b"10.0.0.1")]):
        assert (await raw_handshake(server.port, headers=forwarded("10.0.0.2"))).status == 503


def test_the_client_address():
    policy = AdmissionPolicy(path="/ws", trusted_proxies=parse_trusted_proxies("10.9.0.1, ::1"))

    def address(peer: str | None, *values: str) -> str | None:
        headers = [(b"x-forwarded-for", v.encode()) for v in values]
        return policy.client_address(peer, HandshakeFacts("/ws", "h", headers))

    assert address(None) is None  # not a socket (an in-process stream): not counted
    assert address("192.0.2.7", "10.0.0.1") == "192.0.2.7"  # not a trusted proxy
    assert address("10.9.0.1", "10.0.0.1") == "10.0.0.1"
    assert address("10.9.0.1", "1.1.1.1, 10.0.0.1") == "10.0.0.1"
    assert address("10.9.0.1", "1.1.1.1", "10.0.0.1") == "10.0.0.1"
    assert address("10.9.0.1", "2001:DB8::1") == str(ipaddress.ip_address("2001:db8::1"))
    assert address("10.9.0.1") == "10.9.0.1"  # no header: the proxy itself
    assert address("10.9.0.1", "garbage") == "10.9.0.1"
    assert address("::1", "10.0.0.1") == "10.0.0.1"
