"""HTTP on the agent's port, over real sockets: routes, validators, refusals, metrics,
and the handover to the WebSocket with the bytes already read."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing
from http_client import HttpClient, fetch, raw_exchange
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import wrap_client_stream

from trio_agent import AgentServer, ServerConfig
from trio_agent.server.web.front import ReplayStream
from trio_agent.testing.wire import WireClient, connect

JS = "text/javascript; charset=utf-8"


async def test_the_demo_page_is_html_with_a_strict_policy(start_server):
    server = await start_server()
    page = await fetch(server, "/")
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'data-testid="prompt"' in page.text
    assert '<meta name="trio-agent-websocket-path" content="/ws">' in page.text


async def test_the_page_names_the_configured_websocket_path(start_server):
    server = await start_server(path="/agent")
    page = await fetch(server, "/")
    assert '<meta name="trio-agent-websocket-path" content="/agent">' in page.text


@pytest.mark.parametrize(
    ("target", "content_type"),
    [
        ("/static/agent-client.js", JS),
        ("/static/demo/demo.js", JS),
        ("/static/demo/demo.css", "text/css; charset=utf-8"),
    ],
)
async def test_static_files_have_their_content_type_and_validators(
    start_server, target, content_type
):
    server = await start_server()
    response = await fetch(server, target)
    assert response.status == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["etag"].startswith('"')
    assert response.headers["last-modified"].endswith(" GMT")
    assert response.headers["access-control-allow-origin"] == "*"
    assert int(response.headers["content-length"]) == len(response.body) > 0


async def test_the_client_module_is_the_one_in_the_package(start_server):
    from importlib.resources import files

    server = await start_server()
    response = await fetch(server, "/static/agent-client.js")
    assert (
        response.body
        == (files("trio_agent.server.web") / "static" / "agent-client.js").read_bytes()
    )
    assert b"export class AgentClient" in response.body


async def test_conditional_requests_get_304_without_a_body(start_server):
    server = await start_server()
    first = await fetch(server, "/static/agent-client.js")
    by_etag = await fetch(
        server, "/static/agent-client.js", headers=[("If-None-Match", first.headers["etag"])]
    )
    assert by_etag.status == 304
    assert by_etag.body == b""
    assert by_etag.headers["etag"] == first.headers["etag"]
    by_date = await fetch(
        server,
        "/static/agent-client.js",
        headers=[("If-Modified-Since", first.headers["last-modified"])],
    )
    assert by_date.status == 304
    changed = await fetch(server, "/static/agent-client.js", headers=[("If-None-Match", '"x"')])
    assert changed.status == 200
    assert changed.body == first.body


async def test_head_gives_the_headers_of_get_and_no_body(start_server):
    server = await start_server()
    get = await fetch(server, "/static/agent-client.js")
    head = await fetch(server, "/static/agent-client.js", "HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["etag"] == get.headers["etag"]


async def test_health_and_readiness(start_server):
    server = await start_server()
    health = await fetch(server, "/healthz")
    assert (health.status, health.text) == (200, "ok\n")
    assert health.headers["content-type"] == "text/plain; charset=utf-8"
    assert health.headers["cache-control"] == "no-store"
    ready = await fetch(server, "/readyz")
    assert ready.status == 200


@pytest.mark.parametrize(
    "target",
    [
        b"/static/../server.py",
        b"/static/../../pyproject.toml",
        b"/static/%2e%2e/server.py",
        b"/static/%2E%2E%2Fserver.py",
        b"/static/..%2f..%2fpyproject.toml",
        b"/static/demo/../../server.py",
        b"/static/demo/%2e%2e/%2e%2e/__init__.py",
        b"/static//etc/passwd",
        b"/static/%2Fetc%2Fpasswd",
        b"/static/..\\server.py",
        b"/static/agent-client.js%00.html",
        b"/static/",
        b"/static/demo",
        b"/static/demo/",
        b"/static/./agent-client.js",
        b"/static/__init__.py",
        b"/static/../web/routes.py",
    ],
)
async def test_no_traversal_out_of_the_static_files(start_server, target):
    server = await start_server()
    response = await fetch(server, target)
    assert response.status == 404
    assert response.text == "not found\n"


@pytest.mark.parametrize("target", ["/nowhere", "/index.html", "/healthz/x", "/metrics.txt"])
async def test_unknown_paths_are_404(start_server, target):
    server = await start_server()
    assert (await fetch(server, target)).status == 404


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/"),
        ("PUT", "/static/agent-client.js"),
        ("DELETE", "/healthz"),
        ("POST", "/metrics"),
        ("OPTIONS", "/readyz"),
    ],
)
async def test_a_wrong_method_is_405_with_allow(start_server, method, target):
    server = await start_server()
    response = await fetch(server, target, method, body=b"{}")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_a_body_still_to_come_is_not_waited_for(start_server):
    server = await start_server()
    reply = await raw_exchange(
        server, b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"
    )
    assert reply.startswith(b"HTTP/1.1 405 ")
    assert b"connection: close" in reply.lower()


async def test_a_wrong_method_on_an_unknown_path_is_404(start_server):
    server = await start_server()
    assert (await fetch(server, "/nowhere", "POST")).status == 404


async def test_the_websocket_path_without_an_upgrade_is_426(start_server):
    server = await start_server()
    response = await fetch(server, "/ws")
    assert response.status == 426
    assert response.headers["upgrade"] == "websocket"


async def test_no_web_removes_the_page_and_keeps_the_rest(start_server):
    server = await start_server(web=False)
    assert (await fetch(server, "/")).status == 404
    assert (await fetch(server, "/static/demo/index.html")).status == 404
    assert (await fetch(server, "/static/demo/demo.js")).status == 404
    assert (await fetch(server, "/static/agent-client.js")).status == 200
    assert (await fetch(server, "/healthz")).status == 200
    assert (await fetch(server, "/metrics")).status == 200


async def test_keep_alive_and_pipelined_requests(start_server):
    server = await start_server()
    assert server.port is not None
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        client = HttpClient(stream)
        assert (await client.request("/healthz")).status == 200
        assert (await client.request("/readyz")).status == 200
        assert server.stats()["connections"] == 1
    # Pipelined: three requests in one write, three responses in order.
    reply = await raw_exchange(
        server,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert statuses == [b"200", b"404", b"200"]


async def test_garbage_gets_400_and_the_connection_closes(start_server):
    server = await start_server()
    reply = await raw_exchange(server, b"this is not HTTP\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in reply.lower()
    assert b"x-content-type-options: nosniff" in reply.lower()
    assert reply.endswith(b"\r\n\r\nBad Request\n")


async def test_an_oversized_head_gets_431(start_server):
    server = await start_server()
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    reply = await raw_exchange(server, head)
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_a_client_that_leaves_mid_request_leaves_nothing_behind(start_server):
    server = await start_server()
    assert server.port is not None
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHo")
    with trio.fail_after(5):
        await server.wait_idle()
    assert (await fetch(server, "/healthz")).status == 200


# ---------------------------------------------------------------- timeouts and draining


async def serve_memory(server: AgentServer, nursery: trio.Nursery) -> trio.abc.Stream:
    client, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(server.serve_stream, server_side)
    return client


async def test_a_connection_without_a_request_is_closed_after_the_handshake_timeout(
    nursery, autojump_clock
):
    server = AgentServer(ServerConfig(port=0, handshake_timeout_s=3))
    client = await serve_memory(server, nursery)
    start = trio.current_time()
    assert await client.receive_some() == b""  # closed by the server
    assert trio.current_time() - start == pytest.approx(3)
    await server.wait_idle()


async def test_an_idle_keep_alive_connection_closes_as_soon_as_the_server_drains(
    nursery, autojump_clock
):
    server = AgentServer(ServerConfig(port=0, handshake_timeout_s=60))
    client = HttpClient(await serve_memory(server, nursery))
    assert (await client.request("/readyz")).status == 200
    await trio.testing.wait_all_tasks_blocked()
    start = trio.current_time()
    server.shutdown()
    await server.wait_idle()
    assert trio.current_time() == start  # not after the 60 s keep-alive timeout


async def test_readyz_is_503_while_draining(nursery, autojump_clock):
    server = AgentServer(ServerConfig(port=0))
    stream = await serve_memory(server, nursery)
    # A request under way when the drain starts still gets its answer.
    await stream.send_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n")
    await trio.testing.wait_all_tasks_blocked()
    server.shutdown()
    await stream.send_all(b"\r\n")
    response = await HttpClient(stream).receive()
    assert response.status == 503
    assert response.headers["connection"] == "close"
    assert response.headers["retry-after"] == "5"


# ---------------------------------------------------------------- the WebSocket handover


async def test_a_handshake_in_one_byte_pieces_still_becomes_a_session(nursery):
    server = AgentServer(ServerConfig(port=0))
    client_side, server_side = trio.testing.lockstep_stream_pair()
    nursery.start_soon(server.serve_stream, server_side)

    class OneByteAtATime(trio.abc.Stream):
        async def send_all(self, data):
            for i in range(len(data)):
                await client_side.send_all(data[i : i + 1])

        async def wait_send_all_might_not_block(self):
            await client_side.wait_send_all_might_not_block()

        async def receive_some(self, max_bytes=None):
            return await client_side.receive_some(max_bytes)

        async def aclose(self):
            await client_side.aclose()

    async with trio.open_nursery() as inner:
        ws = await wrap_client_stream(inner, OneByteAtATime(), "localhost", "/ws")
        client = await WireClient(ws).start()
        await client.request("r", agent="echo", input="a b c")
        frames = await client.until_done("r")
        assert "".join(f["payload"]["delta"] for f in frames if f["msg_type"] == "STREAM") == (
            "a b c"
        )
        client.assert_guarantees()
        await ws.aclose()
        inner.cancel_scope.cancel()


async def test_replay_stream_gives_back_what_was_read_then_reads_on():
    near, far = trio.testing.memory_stream_pair()
    replay = ReplayStream(far, b"abcdef")
    assert await replay.receive_some(4) == b"abcd"
    assert await replay.receive_some() == b"ef"
    await near.send_all(b"gh")
    assert await replay.receive_some() == b"gh"
    await replay.send_all(b"out")
    assert await near.receive_some() == b"out"
    await replay.aclose()
    assert await near.receive_some() == b""


async def test_sessions_still_work_over_sockets_and_http_shares_the_port(start_server):
    server = await start_server()
    async with connect(server, "socket") as client:
        assert (await fetch(server, "/healthz")).status == 200
        await client.request("r", words=3, words_per_s=0)
        await client.until_done("r")
        client.assert_guarantees()


# ---------------------------------------------------------------- metrics


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def metrics(server: AgentServer):
    response = await fetch(server, "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return scrape(response.text)


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_when_requests_run(start_server):
    server = await start_server(metrics_cache_s=0)  # each scrape fresh
    before = await metrics(server)
    assert value(before, "trio_agent_sessions_open") == 0
    async with connect(server, "socket") as client:
        await client.request("done", words=5, words_per_s=0)
        await client.until_done("done")
        await client.request("cut", words=100_000, words_per_s=1000)
        await client.recv_until(lambda f: f["msg_type"] == "STREAM" and f["request_id"] == "cut")
        ack = await client.interrupt("cut")
        await client.until_ack(ack)
        await client.until_done("cut")
        await client.send_raw("not json")
        await client.recv_until(lambda f: f["msg_type"] == "ERROR")
        during = await metrics(server)
        assert value(during, "trio_agent_sessions_open") == 1
    after = await metrics(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("trio_agent_sessions_total") == 1
    assert moved("trio_agent_requests_total", agent="lorem", status="completed") == 1
    assert moved("trio_agent_requests_total", agent="lorem", status="interrupted") == 1
    assert moved("trio_agent_interrupts_total") == 1
    assert moved("trio_agent_requests_interrupted_total") == 1
    assert moved("trio_agent_interrupt_ack_seconds_count") == 1
    assert moved("trio_agent_protocol_errors_total", code="INVALID_JSON") == 1
    assert moved("trio_agent_frames_sent_total", kind="stream") >= 6
    assert moved("trio_agent_frames_sent_total", kind="done") == 2
    assert moved("trio_agent_sent_bytes_total", kind="stream") > 0
    assert moved("trio_agent_http_responses_total", code="200") >= 2
    assert value(after, "trio_agent_sessions_open") == 0
    assert value(after, "process_open_fds") > 0
    assert "trio_agent_stream_frames_discarded" in {
        f.name for f in text_string_to_metric_families((await fetch(server, "/metrics")).text)
    }


async def test_discarded_stream_frames_are_counted(start_server, autojump_clock):
    server = await start_server()
    async with connect(server, lockstep=True) as client:
        await client.request("r", words=10_000, words_per_s=0)
        await client.recv_until(lambda f: f["msg_type"] == "STREAM")
        await trio.testing.wait_all_tasks_blocked()  # the stream lane is full now
        await client.until_ack(await client.interrupt("r"))
        await client.until_done("r")
    counted = server.metrics.stream_frames_discarded._value.get()
    assert counted >= server.config.stream_lane_capacity - 1


async def test_metrics_speak_openmetrics_when_asked(start_server):
    server = await start_server()
    response = await fetch(
        server, "/metrics", headers=[("Accept", "application/openmetrics-text; version=1.0.0")]
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
