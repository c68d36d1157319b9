"""The command line and configuration, including a real process stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import trio

from trio_agent.cli.main import main
from trio_agent.server.config import ServerConfig, parse_config
from trio_agent.testing.wire import WireClient, only


def test_flags_beat_environment_beat_defaults():
    env = {
        "TRIO_AGENT_PORT": "9001",
        "TRIO_AGENT_STREAM_LANE_CAPACITY": "7",
        "TRIO_AGENT_LOG_FORMAT": "json",
    }
    config = parse_config(["--port", "9002", "--idle-timeout-s", "0"], env)
    assert config.port == 9002
    assert config.stream_lane_capacity == 7
    assert config.log_format == "json"
    assert config.idle_timeout_s == 0
    assert config.host == ServerConfig().host


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--stream-lane-capacity", "0"], {}),
        (["--path", "ws"], {}),
        ([], {"TRIO_AGENT_PORT": "eighty"}),
        ([], {"TRIO_AGENT_LANES": "lifo"}),
    ],
)
def test_bad_settings_are_refused_clearly(argv, env):
    with pytest.raises(ValueError, match=r"\w"):
        parse_config(argv, env)


def test_serve_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--max-concurrent-requests" in out
    assert "TRIO_AGENT_IDLE_TIMEOUT_S" in out


async def test_real_process_serves_and_sigterm_drains_with_shutdown_done():
    """`python -m trio_agent serve` in its own process: it serves, and SIGTERM ends the
    running request with DONE{status: shutdown}, closes with 1001 and exits 0."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_agent", "serve", "--port", "0", "--log-format", "json"],
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        url = None
        buffer = b""
        with trio.fail_after(20):
            while url is None:
                chunk = await proc.stderr.receive_some()
                assert chunk, "server exited before listening"
                buffer += chunk
                for line in buffer.splitlines():
                    record = json.loads(line)["record"]
                    if record["message"] == "listening":
                        url = record["extra"]["url"]
        from trio_websocket import open_websocket_url

        async with open_websocket_url(url) as ws:
            client = await WireClient(ws).start()
            await client.request("long", agent="lorem", words=100_000, words_per_s=50)
            await client.recv()
            proc.send_signal(signal.SIGTERM)
            assert await client.until_closed() == 1001
            done = only(client.received, "DONE", "long")
            assert len(done) == 1
            assert done[0]["payload"]["status"] == "shutdown"
            client.assert_guarantees()
        with trio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("argv", "env", "web"),
    [
        ([], {}, True),
        (["--no-web"], {}, False),
        (["--web"], {"TRIO_AGENT_WEB": "0"}, True),
        ([], {"TRIO_AGENT_WEB": "off"}, False),
        ([], {"TRIO_AGENT_WEB": "Yes"}, True),
    ],
)
def test_the_web_switch(argv, env, web):
    assert parse_config(argv, env).web is web


def test_a_switch_that_is_not_a_boolean_is_refused():
    with pytest.raises(ValueError, match="TRIO_AGENT_WEB"):
        parse_config([], {"TRIO_AGENT_WEB": "maybe"})
