"""The openai agent against a fake OpenAI-compatible upstream over real HTTP.

The fake (trio_agent.testing.fake_openai) frames its stream like the OpenAI API and records
every request body it got and the moment its client disconnected, so these tests
check what the upstream saw: that an interrupt closed its connection, and what
history the next request carried. Timeouts run on the real clock with deadlines of
a few tens of milliseconds, since the upstream is a real socket.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from loguru import logger

from trio_agent import agents as builtin
from trio_agent.agents.openai.agent import (
    OPENAI_DEFAULT_BASE_URL,
    OpenAIAgent,
    OpenAIConfig,
    openai_agent_from,
)
from trio_agent.agents.openai.history import ChatHistory
from trio_agent.cli.main import build_parser
from trio_agent.testing.fake_openai import FakeOpenAI, Script
from trio_agent.testing.wire import connect, only


@pytest.fixture(params=["memory", "socket"])
def transport(request) -> str:
    return request.param


@pytest.fixture
async def fake(nursery) -> FakeOpenAI:
    return await nursery.start(FakeOpenAI().run)


@pytest.fixture
def start_openai(start_server, fake):
    """``server = await start_openai(**openai_settings, server=dict(...))``: a server whose
    ``openai`` agent talks to the fake; ``server.agents["openai"]`` is the agent."""

    async def start(*, api_key=None, server=None, **settings):
        settings.setdefault("openai_base_url", fake.base_url)
        settings.setdefault("openai_model", "fake-model")
        agent = OpenAIAgent(OpenAIConfig(**settings), api_key=api_key)
        return await start_server({"openai": agent, "lorem": builtin.lorem}, **(server or {}))

    return start


def deltas(c, request_id: str) -> list[str]:
    return [f["payload"]["delta"] for f in only(c.received, "STREAM", request_id)]


def streamed(c, request_id: str, count: int):
    return lambda f: len(only(c.received, "STREAM", request_id)) >= count


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --------------------------------------------------------------------------- replies


async def test_full_reply_is_streamed_and_the_request_is_what_the_api_expects(
    start_openai, fake, transport
):
    fake.enqueue(Script(tokens=("Hel", "lo", " there")))
    server = await start_openai(api_key="sk-test", openai_system_prompt="Be brief.")
    async with connect(server, transport) as c:
        await c.request("r1", "hi", agent="openai", temperature=0.5, max_tokens=7)
        done = (await c.until_done("r1"))[-1]["payload"]
        assert deltas(c, "r1") == ["Hel", "lo", " there"]
        assert done == {
            "status": "completed",
            "interrupted": False,
            "frames": 3,
            "finish_reason": "stop",
        }
        sent = fake.requests[0]
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["authorization"] == "Bearer sk-test"
        assert sent.body == {
            "model": "fake-model",
            "temperature": 0.5,
            "max_tokens": 7,
            "messages": [{"role": "system", "content": "Be brief."}, user("hi")],
            "stream": True,
        }
        c.assert_guarantees()


async def test_options_model_overrides_and_bad_options_fail_clearly(start_openai, fake):
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai", model="other-model")
        await c.until_done("r1")
        assert fake.requests[0].body["model"] == "other-model"
        for request_id, option in [
            ("t", {"temperature": 3}),
            ("m", {"max_tokens": 0}),
            ("n", {"new_conversation": "yes"}),
            ("o", {"model": ""}),
        ]:
            await c.request(request_id, agent="openai", **option)
            done = (await c.until_done(request_id))[-1]["payload"]
            assert done["status"] == "failed"
            assert f"options.{next(iter(option))}" in done["error"]["message"]
        assert len(fake.requests) == 1  # none of them reached the upstream
        c.assert_guarantees()


async def test_no_model_configured_sends_none_and_the_upstream_decides(start_openai, fake):
    server = await start_openai(openai_model=None)
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        await c.until_done("r1")
        assert "model" not in fake.requests[0].body


async def test_older_servers_without_done_marker_complete(start_openai, fake):
    fake.enqueue(Script(tokens=("a", "b"), then="finish_without_done", finish_reason="length"))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "completed"
        assert done["finish_reason"] == "length"


async def test_the_connection_is_reused_after_a_complete_reply(start_openai, fake):
    server = await start_openai()
    async with connect(server) as c:
        for request_id in ("r1", "r2", "r3"):
            await c.request(request_id, agent="openai")
            await c.until_done(request_id)
    assert len(fake.requests) == 3
    assert fake.open_connections == 1  # one keep-alive connection served all three


# --------------------------------------------------------------------------- interrupts


async def test_interrupt_mid_stream_closes_the_upstream_connection(start_openai, fake, transport):
    fake.enqueue(Script.counting(100, stop_after=3, then="hang"))
    server = await start_openai()
    async with connect(server, transport) as c:
        await c.request("r1", agent="openai")
        await c.recv_until(streamed(c, "r1", 3))
        ack = await c.interrupt("r1")
        await c.until_ack(ack)
        done = await c.recv()  # guarantee 5: the next frame about r1 is its DONE
        assert done["msg_type"] == "DONE"
        payload = done["payload"]
        assert payload["status"] == "interrupted"
        assert payload["frames"] == 3
        assert payload["upstream_cancelled"] is True
        assert 0 <= payload["upstream_close_ms"] < 1000
        with trio.fail_after(5):
            await fake.requests[0].disconnected.wait()
        c.assert_guarantees()


async def test_interrupt_while_the_agent_waits_on_backpressure_closes_the_upstream(
    start_openai, fake
):
    """Here the cancellation lands in ``stream.send`` (the client does not read), not in
    an HTTP read: the agent's own shielded cleanup closes the response."""
    fake.enqueue(Script.counting(200, stop_after=100, then="hang"))
    server = await start_openai(server={"stream_lane_capacity": 1})
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", agent="openai")
        await c.recv_until(streamed(c, "r1", 2))
        with trio.fail_after(5):
            await fake.requests[0].tokens_done.wait()
        ack = await c.interrupt("r1")
        await c.until_ack(ack)
        payload = (await c.until_done("r1"))[-1]["payload"]
        assert payload["upstream_cancelled"] is True
        assert payload["frames"] == len(deltas(c, "r1"))
        with trio.fail_after(5):
            await fake.requests[0].disconnected.wait()
        c.assert_guarantees()


async def test_interrupt_before_the_upstream_answers_still_reaches_it(start_openai, fake):
    """llama.cpp sends no header before the first token: an interrupt during prompt
    processing must close the connection too."""
    fake.enqueue(Script(hang_before_headers=True))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        await fake.wait_for_requests(1)
        ack = await c.interrupt("r1")
        await c.until_ack(ack)
        payload = (await c.until_done("r1"))[-1]["payload"]
        assert payload["frames"] == 0
        assert payload["upstream_cancelled"] is True
        with trio.fail_after(5):
            await fake.requests[0].disconnected.wait()


async def test_new_request_after_interrupt_gets_none_of_the_old_tokens(
    start_openai, fake, transport
):
    fake.enqueue(
        Script.counting(1000, prefix="old", tokens_per_s=200),
        Script.counting(5, prefix="new"),
    )
    server = await start_openai()
    async with connect(server, transport) as c:
        await c.request("r1", agent="openai")
        await c.recv_until(streamed(c, "r1", 2))
        ack = await c.interrupt("r1")
        await c.request("r2", "next", agent="openai")  # before the ACK is even read
        await c.until_done("r2")
        if not only(c.received, "DONE", "r1"):
            await c.until_done("r1")
        assert deltas(c, "r2") == [f" new{i}" for i in range(5)]
        assert all(d.startswith(" old") for d in deltas(c, "r1"))
        ack_frame = only(c.received, "INTERRUPT_ACK")[0]
        assert ack_frame["ref"] == ack
        assert only(c.received, "DONE", "r1")[0]["payload"]["upstream_cancelled"] is True
        assert fake.requests[0].disconnected.is_set()
        c.assert_guarantees()


async def test_shutdown_with_a_request_in_flight_closes_the_upstream(start_openai, fake):
    fake.enqueue(Script.counting(10, stop_after=1, then="hang"))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        await c.recv_until(streamed(c, "r1", 1))
        server.shutdown()
        assert await c.until_closed() == 1001
        assert only(c.received, "DONE", "r1")[0]["payload"]["status"] == "shutdown"
        c.assert_guarantees()
    with trio.fail_after(5):
        await fake.requests[0].disconnected.wait()


# --------------------------------------------------------------------------- history


async def test_history_after_an_interrupt_holds_only_the_delivered_text(start_openai, fake):
    """The upstream produced 20 tokens, the client read a few before interrupting: the
    next request's history has exactly those, as DONE.frames says."""
    fake.enqueue(Script.counting(40, stop_after=20, then="hang"), Script(tokens=("ok",)))
    server = await start_openai(server={"stream_lane_capacity": 2})
    async with connect(server, "memory", lockstep=True) as c:
        await c.request("r1", "first question", agent="openai")
        await c.recv_until(streamed(c, "r1", 3))
        with trio.fail_after(5):
            await fake.requests[0].tokens_done.wait()
        await c.until_ack(await c.interrupt("r1"))
        done = (await c.until_done("r1"))[-1]["payload"]
        delivered = "".join(deltas(c, "r1"))
        assert fake.requests[0].tokens_sent == 20 > done["frames"]
        assert delivered == "".join(f" t{i}" for i in range(done["frames"]))

        await c.request("r2", "second question", agent="openai")
        await c.until_done("r2")
        assert fake.requests[1].messages == [
            user("first question"),
            assistant(delivered),
            user("second question"),
        ]
        # The server's own record knows the first reply was cut.
        agent = server.agents["openai"]
        assert isinstance(agent, OpenAIAgent)
        turns = agent.conversation(server.sessions[c.session_id].agent_state).turns
        assert [t.interrupted for t in turns] == [False, True, False, False]
        c.assert_guarantees()


async def test_concurrent_requests_see_history_as_it_stood_and_append_in_end_order(
    start_openai, fake
):
    fake.enqueue(
        Script.counting(10, prefix="a", stop_after=2, then="hang"),
        Script(tokens=("B",)),
        Script(tokens=("C",)),
    )
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", "one", agent="openai")
        await c.recv_until(streamed(c, "r1", 2))
        await c.request("r2", "two", agent="openai")
        await c.until_done("r2")
        # r1 is still running: it is not part of r2's history.
        assert fake.requests[1].messages == [user("two")]
        await c.interrupt("r1")
        await c.until_done("r1")
        await c.request("r3", "three", agent="openai")
        await c.until_done("r3")
        # r2 ended before r1: its turns come first.
        assert fake.requests[2].messages == [
            user("two"),
            assistant("B"),
            user("one"),
            assistant(" a0 a1"),
            user("three"),
        ]


async def test_new_conversation_starts_afresh_and_sessions_do_not_share_history(start_openai, fake):
    server = await start_openai(openai_system_prompt="sys")
    system = {"role": "system", "content": "sys"}
    async with connect(server) as alice, connect(server) as bob:
        await alice.request("a1", "hello", agent="openai")
        await alice.until_done("a1")
        await bob.request("b1", "bob here", agent="openai")
        await bob.until_done("b1")
        assert fake.requests[1].messages == [system, user("bob here")]
        await alice.request("a2", "again", agent="openai", new_conversation=True)
        await alice.until_done("a2")
        assert fake.requests[2].messages == [system, user("again")]
        await alice.request("a3", "and", agent="openai")
        await alice.until_done("a3")
        assert fake.requests[3].messages[:2] == [system, user("again")]
        assert len(fake.requests[3].messages) == 4


async def test_a_request_that_failed_before_any_delta_leaves_history_alone(start_openai, fake):
    fake.enqueue(Script(status=503, error_message="busy"))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", "lost", agent="openai")
        await c.until_done("r1")
        await c.request("r2", "retry", agent="openai")
        await c.until_done("r2")
        assert fake.requests[1].messages == [user("retry")]


# --------------------------------------------------------------------------- timeouts


async def test_first_token_timeout(start_openai, fake):
    fake.enqueue(Script(hang_before_headers=True))
    server = await start_openai(openai_first_token_timeout_s=0.05)
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "timeout"
        assert done["reason"] == "upstream first_token timeout: 0.05 s elapsed"
        assert done["upstream_cancelled"] is True
        with trio.fail_after(5):
            await fake.requests[0].disconnected.wait()
        c.assert_guarantees()


async def test_token_gap_timeout(start_openai, fake):
    fake.enqueue(Script.counting(5, stop_after=2, then="hang"))
    server = await start_openai(openai_token_gap_timeout_s=0.05)
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "timeout"
        assert done["reason"] == "upstream token_gap timeout: 0.05 s elapsed"
        assert done["frames"] == 2
        assert done["upstream_cancelled"] is True
        with trio.fail_after(5):
            await fake.requests[0].disconnected.wait()


async def test_an_error_answer_that_never_ends_is_a_first_token_timeout(start_openai, fake):
    fake.enqueue(Script(status=500, then="hang"))
    server = await start_openai(openai_first_token_timeout_s=0.05)
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "timeout"
        assert done["reason"] == "upstream first_token timeout: 0.05 s elapsed"


async def test_connect_timeout_covers_waiting_for_a_pooled_connection(start_openai, fake):
    """With one connection allowed and that one busy, a second request cannot get a
    connection: its connect deadline expires, and it never reaches the upstream."""
    fake.enqueue(Script.counting(5, stop_after=1, then="hang"))
    server = await start_openai(openai_max_connections=1, openai_connect_timeout_s=0.25)
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        await c.recv_until(streamed(c, "r1", 1))
        await c.request("r2", agent="openai")
        done = (await c.until_done("r2"))[-1]["payload"]
        assert done["status"] == "timeout"
        assert done["reason"] == "upstream connect timeout: 0.25 s elapsed"
        assert "upstream_cancelled" not in done
        assert len(fake.requests) == 1
        await c.interrupt("r1")
        await c.until_done("r1")
        c.assert_guarantees()


async def test_the_request_timeout_still_applies_and_closes_the_upstream(start_openai, fake):
    fake.enqueue(Script.counting(5, stop_after=1, then="hang"))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai", timeout_s=0.1)
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "timeout"
        assert done["reason"] == "timeout_s=0.1 elapsed"
        assert done["upstream_cancelled"] is True
        with trio.fail_after(5):
            await fake.requests[0].disconnected.wait()


# --------------------------------------------------------------------------- upstream errors


async def closed_port() -> int:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_upstream_unavailable_and_the_session_lives_on(start_server):
    port = await closed_port()
    agent = OpenAIAgent(OpenAIConfig(openai_base_url=f"http://127.0.0.1:{port}/v1"))
    server = await start_server({"openai": agent, "lorem": builtin.lorem})
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "failed"
        assert done["error"]["code"] == "UPSTREAM_UNAVAILABLE"
        assert f"127.0.0.1:{port}" in done["error"]["message"]
        assert "upstream_status" not in done["error"]
        await c.request("r2", agent="lorem", words=2, words_per_s=0)
        assert (await c.until_done("r2"))[-1]["payload"]["status"] == "completed"
        c.assert_guarantees()


@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_upstream_http_error_carries_its_status_and_message(start_openai, fake, status):
    fake.enqueue(Script(status=status, error_message="model overloaded, try later"))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "failed"
        assert done["error"] == {
            "code": "UPSTREAM_ERROR",
            "message": f"the upstream answered HTTP {status}: model overloaded, try later",
            "upstream_status": status,
        }
        assert "upstream_cancelled" not in done
        await c.request("r2", agent="openai")
        assert (await c.until_done("r2"))[-1]["payload"]["status"] == "completed"


async def test_error_event_mid_stream_is_an_upstream_error(start_openai, fake):
    fake.enqueue(Script(tokens=("a",), then="error_event", error_message="engine died"))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["frames"] == 1
        assert done["error"]["code"] == "UPSTREAM_ERROR"
        assert "engine died" in done["error"]["message"]
        assert done["error"]["upstream_status"] == 200


@pytest.mark.parametrize(
    ("script", "words"),
    [
        (Script(tokens=("a",), then="bad_json"), "not a chunk"),
        (Script(tokens=("a",), then="bad_chunk"), "not a chunk"),
        (Script(tokens=("a",), then="eof"), "before [DONE]"),
        (Script(content_type="application/json"), "text/event-stream"),
    ],
    ids=["bad_json", "bad_chunk", "eof", "not_sse"],
)
async def test_malformed_streams_are_upstream_protocol_errors(start_openai, fake, script, words):
    fake.enqueue(script)
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "failed"
        assert done["error"]["code"] == "UPSTREAM_PROTOCOL"
        assert words in done["error"]["message"]
        if script.then in ("bad_json", "bad_chunk"):
            # The upstream was left streaming: we hung up on it.
            assert done["upstream_cancelled"] is True
            with trio.fail_after(5):
                await fake.requests[0].disconnected.wait()
        await c.request("r2", agent="openai")
        assert (await c.until_done("r2"))[-1]["payload"]["status"] == "completed"


async def test_connection_dropped_mid_stream_is_upstream_unavailable(start_openai, fake):
    fake.enqueue(Script(tokens=("a", "b"), then="drop"))
    server = await start_openai()
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["frames"] == 2
        assert done["error"]["code"] == "UPSTREAM_UNAVAILABLE"


# --------------------------------------------------------------------------- the key


async def test_the_api_key_is_sent_as_a_bearer_token_and_never_shown(start_server, caplog, nursery):
    """A run through success, a 401 whose message echoes the key, and a refused
    connection, with every log (loguru at TRACE, stdlib at DEBUG) captured: the key is
    in the Authorization header and nowhere else."""
    key = "sk-test-very-secret-0123456789"
    caplog.set_level(logging.DEBUG)
    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE", backtrace=True, diagnose=True)
    try:
        good = await nursery.start(FakeOpenAI(api_key=key).run)
        strict = await nursery.start(FakeOpenAI(api_key="sk-a-different-one").run)
        port = await closed_port()
        agents = {
            name: OpenAIAgent(OpenAIConfig(openai_base_url=url), api_key=key)
            for name, url in [
                ("good", good.base_url),
                ("strict", strict.base_url),
                ("gone", f"http://127.0.0.1:{port}/v1"),
            ]
        }
        server = await start_server(agents)
        async with connect(server, "socket") as c:
            for name in agents:
                await c.request(name, agent=name)
                await c.until_done(name)
            await c.request("bad", agent="good", temperature="hot")
            await c.until_done("bad")
        await server.wait_idle()
    finally:
        logger.remove(sink)
    assert good.requests[0].headers["authorization"] == f"Bearer {key}"
    errors = {f["request_id"]: f["payload"].get("error") for f in only(c.received, "DONE")}
    assert errors["good"] is None
    assert errors["strict"]["upstream_status"] == 401
    assert "[redacted]" in errors["strict"]["message"]
    assert errors["gone"]["code"] == "UPSTREAM_UNAVAILABLE"
    everything = [str(c.received), caplog.text, *lines]
    everything += [
        repr(agent) + repr(agent.config) + agent.description for agent in agents.values()
    ]
    assert lines  # the capture did see the run
    assert not [text for text in everything if key in text]


# --------------------------------------------------------------------------- configuration


async def test_with_no_upstream_the_agent_is_listed_unavailable_and_refused(start_server):
    server = await start_server({"openai": openai_agent_from(environ={}), "lorem": builtin.lorem})
    async with connect(server) as c:
        entry = c.session["payload"]["agents"]["openai"]
        assert entry["available"] is False
        assert "OPENAI_BASE_URL" in entry["unavailable_reason"]
        await c.request("r1", agent="openai")
        error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
        assert error["payload"]["code"] == "UNKNOWN_AGENT"
        assert "no upstream configured" in error["payload"]["message"]
        assert c.session["payload"]["agents"]["lorem"]["available"] is True
        c.checker.received({"msg_type": "ERROR", "request_id": "r1"})
        c.assert_guarantees()


def test_settings_come_from_flags_the_ecosystem_variables_and_trio_agent_variables():
    parse = build_parser().parse_args
    env = {
        "OPENAI_BASE_URL": "http://10.0.0.5:8000/v1",
        "OPENAI_API_KEY": "sk-env",
        "TRIO_AGENT_OPENAI_MODEL": "llama",
        "TRIO_AGENT_OPENAI_TOKEN_GAP_TIMEOUT_S": "4.5",
    }
    agent = openai_agent_from(parse(["serve"]), env)
    assert agent.base_url == "http://10.0.0.5:8000/v1"
    assert agent.config.openai_model == "llama"
    assert agent.config.openai_token_gap_timeout_s == 4.5
    assert agent.unavailable_reason is None
    flags = ["serve", "--openai-base-url", "http://h:1/v1", "--openai-model", "qwen"]
    flags += ["--openai-system-prompt", "Be terse."]
    agent = openai_agent_from(parse(flags), env)
    assert (agent.base_url, agent.config.openai_model) == ("http://h:1/v1", "qwen")
    assert agent.config.openai_system_prompt == "Be terse."
    # Only a key: the official API, as with the SDK.
    assert openai_agent_from(parse(["serve"]), {"OPENAI_API_KEY": "k"}).base_url == (
        OPENAI_DEFAULT_BASE_URL
    )
    assert openai_agent_from(parse(["serve"]), {}).unavailable_reason is not None


@pytest.mark.parametrize(
    "env",
    [
        {"OPENAI_BASE_URL": "localhost:8000"},
        {"OPENAI_BASE_URL": "ftp://h/v1"},
        {"TRIO_AGENT_OPENAI_FIRST_TOKEN_TIMEOUT_S": "0"},
        {"TRIO_AGENT_OPENAI_MAX_CONNECTIONS": "0"},
        {"TRIO_AGENT_OPENAI_CONNECT_TIMEOUT_S": "soon"},
    ],
)
def test_bad_settings_are_refused_clearly(env):
    with pytest.raises(ValueError, match=r"\w"):
        openai_agent_from(None, env)


def test_serve_help_lists_the_openai_settings(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--openai-base-url", "--openai-model", "--openai-system-prompt"):
        assert flag in out
    for variable in ("OPENAI_BASE_URL", "TRIO_AGENT_OPENAI_MODEL", "OPENAI_API_KEY"):
        assert variable in out


async def test_one_client_lives_exactly_as_long_as_the_server(fake):
    from trio_agent import AgentServer, ServerConfig

    agent = OpenAIAgent(OpenAIConfig(openai_base_url=fake.base_url))
    server = AgentServer(ServerConfig(port=0), {"openai": agent})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        async with connect(server) as c:
            for request_id in ("r1", "r2"):
                await c.request(request_id, agent="openai")
                await c.until_done(request_id)
        assert fake.open_connections == 1  # kept alive in the shared pool
        server.shutdown()
    assert agent._client is None  # closed when the server stopped
    await trio.testing.wait_all_tasks_blocked()
    assert fake.open_connections == 0


def test_a_conversation_is_kept_per_agent_in_the_session_state():
    agent = OpenAIAgent(OpenAIConfig(openai_base_url="http://h/v1", openai_system_prompt="s"))
    state: dict[object, object] = {}
    conversation = agent.conversation(state)
    assert isinstance(conversation, ChatHistory)
    assert agent.conversation(state) is conversation
    assert OpenAIAgent(OpenAIConfig(openai_base_url="http://h/v1")).conversation(state) is not (
        conversation
    )


async def test_history_of_a_spoken_interrupted_reply_holds_what_was_heard(start_openai, fake):
    """Spoken, the reply's captions run ahead of what the user heard: the history keeps
    DONE.heard_text, the words whose audio the client played (built-in synthesiser:
    " t0" is 0-120 ms, " t1" 160-280 ms, " t2" 320-440 ms)."""
    fake.enqueue(Script.counting(40, stop_after=30, then="hang"), Script(tokens=("ok",)))
    server = await start_openai(server={"speech": "builtin"})
    async with connect(server, "socket") as c:
        await c.request("r1", "first question", agent="openai", voice=True, audio_pace=0)
        await c.recv_until(lambda f: f["msg_type"] == "AUDIO" and f["start_ms"] >= 1000)
        await c.send(
            {
                "msg_type": "INTERRUPT",
                "msg_id": "i1",
                "request_id": "r1",
                "payload": {"played_ms": 300},
            }
        )
        await c.until_ack("i1")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["heard_ms"] == 300.0
        assert done["heard_text"] == " t0 t1"
        assert len(deltas(c, "r1")) > 2  # the captions were further on

        await c.request("r2", "second question", agent="openai")
        await c.until_done("r2")
        assert fake.requests[1].messages == [
            user("first question"),
            assistant(" t0 t1"),
            user("second question"),
        ]
        c.assert_guarantees()
