"""wss:// with certificates from a throwaway CA (trustme)."""

from __future__ import annotations

import contextlib
import ssl

import pytest
import trio
import trio.testing
import trustme
from handshakes import request_bytes
from testing_agents import endless
from trio_websocket import open_websocket_url

from trio_agent import AgentServer, ServerConfig
from trio_agent import agents as builtin
from trio_agent.testing.wire import WireClient

TOKEN = "tls-T0ken"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca, tmp_path):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "chain.pem", tmp_path / "key.pem"
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


@pytest.fixture
def client_context(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def agent_set():
    return {"lorem": builtin.lorem, "endless": endless()}


async def test_wss_serves_the_protocol_with_a_token(start_server, cert_files, client_context):
    certfile, keyfile = cert_files
    server = await start_server(agent_set(), certfile=certfile, keyfile=keyfile, token=TOKEN)
    assert server.url.startswith("wss://127.0.0.1:")
    async with open_websocket_url(f"{server.url}?token={TOKEN}", ssl_context=client_context) as ws:
        client = await WireClient(ws).start()
        await client.request("r1", agent="endless")
        await client.recv_until(lambda f: f["msg_type"] == "STREAM")
        ack = await client.interrupt("r1")
        await client.until_ack(ack)
        done = (await client.until_done("r1"))[-1]
        assert done["payload"]["status"] == "interrupted"
        client.assert_guarantees()


async def test_the_key_may_sit_in_the_certificate_file(start_server, ca, tmp_path, client_context):
    cert = ca.issue_cert("127.0.0.1")
    both = tmp_path / "both.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(both))
    server = await start_server(agent_set(), certfile=str(both))
    async with open_websocket_url(server.url, ssl_context=client_context) as ws:
        await WireClient(ws).start()


async def test_a_plaintext_client_on_the_tls_port_is_dropped_and_the_server_keeps_serving(
    start_server, cert_files, client_context
):
    certfile, keyfile = cert_files
    server = await start_server(agent_set(), certfile=certfile, keyfile=keyfile)
    idle_tasks = server.stats()["tasks"]
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(request_bytes(f"127.0.0.1:{server.port}"))
    with trio.fail_after(5):
        answer = b""
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some():
                answer += chunk
        await server.wait_idle()
    assert b"101" not in answer  # a TLS alert (or nothing), never a WebSocket
    await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.stats()["tasks"] == idle_tasks
    assert server.sessions_total == 0
    async with open_websocket_url(server.url, ssl_context=client_context) as ws:
        await WireClient(ws).start()


async def test_a_client_that_leaves_mid_tls_handshake_leaves_no_task(start_server, cert_files):
    """The TLS handshake runs inside the WebSocket handshake's deadline, and a
    client that leaves half-way frees its task at once, not at the deadline."""
    certfile, keyfile = cert_files
    server = await start_server(
        agent_set(), certfile=certfile, keyfile=keyfile, handshake_timeout_s=30
    )
    idle_tasks = server.stats()["tasks"]
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await stream.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello, cut
    await stream.aclose()
    with trio.fail_after(5):
        await server.wait_idle()
    await trio.testing.wait_all_tasks_blocked()
    assert server.stats()["tasks"] == idle_tasks


def test_a_certificate_that_cannot_be_read_stops_the_server_with_its_name(tmp_path):
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match=r"missing\.pem"):
        AgentServer(ServerConfig(port=0, certfile=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"garbage\.pem"):
        AgentServer(ServerConfig(port=0, certfile=str(garbage)))


async def test_the_python_client_connects_over_wss_with_its_token(
    start_server, cert_files, client_context
):
    from trio_agent.client import ConnectionFailed, open_agent_client

    certfile, keyfile = cert_files
    server = await start_server(agent_set(), certfile=certfile, keyfile=keyfile, token=TOKEN)
    async with open_agent_client(
        server.url, token=TOKEN, ssl_context=client_context, heartbeat_s=None
    ) as client:
        response = await client.request("hi", agent="lorem", options={"words": 3, "words_per_s": 0})
        assert (await response.done()).status == "completed"
    for token in ("wrong-token", None):
        with pytest.raises(ConnectionFailed) as failed:
            async with open_agent_client(
                server.url, token=token, ssl_context=client_context, heartbeat_s=None
            ):
                pass  # pragma: no cover
        assert failed.value.status_code == 401
