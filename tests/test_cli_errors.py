"""What the command line says when it cannot do what it was asked, and what its help claims.

A server that cannot start (a port in use, a certificate that cannot be read, a bad
setting) prints one line and exits 2, run as a real process; a flag a command does
not know is reported with that command's usage; the help says what the code does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from trio_agent.cli.main import main
from trio_agent.testing.wire import connect

#: Long enough for an interpreter to start; a server that did start never exits.
START_TIMEOUT_S = 30


def serve(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m trio_agent serve FLAGS`` in its own process, expected to exit."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "trio_agent", "serve", "--port", "0", *flags],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that a socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line_and_exit_status_2(busy_port):
    done = serve("--port", str(busy_port))
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"port {busy_port} is in use; choose another with --port\n"
    assert done.stdout == ""


def test_a_host_that_is_not_this_machines_is_one_line_and_exit_status_2():
    done = serve("--host", "192.0.2.1")  # TEST-NET-1: never an address of this machine
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("cannot listen on 192.0.2.1:0 (")
    assert line.endswith("choose another --host or --port")


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """A certificate and its key, a key that is not one, a folder, a path to nothing."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    files = {
        "cert": tmp_path / "chain.pem",
        "key": tmp_path / "key.pem",
        "garbage": tmp_path / "garbage.pem",
        "folder": tmp_path / "folder",
        "missing": tmp_path / "missing.pem",
    }
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(files["cert"]), append=True)
    cert.private_key_pem.write_to_path(str(files["key"]))
    files["garbage"].write_text("not a key\n")
    files["folder"].mkdir()
    return {name: str(path) for name, path in files.items()}


@pytest.mark.parametrize(
    ("cert", "key", "named"),
    [
        ("missing", "", "missing"),
        ("cert", "folder", "folder"),
        ("cert", "garbage", "garbage"),
    ],
    ids=["certificate-missing", "key-a-folder", "key-not-a-key"],
)
def test_tls_files_that_cannot_be_loaded_are_one_line_and_exit_status_2(
    tls_files, cert, key, named
):
    flags = ["--certfile", tls_files[cert]] + (["--keyfile", tls_files[key]] if key else [])
    done = serve(*flags)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("cannot load the TLS certificate from ")
    assert repr(tls_files[named]) in line


def test_a_trace_file_that_cannot_be_written_is_one_line_and_exit_status_2(tmp_path):
    path = str(tmp_path / "no-such-folder" / "trace.jsonl")
    done = serve("--trace", path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"cannot write the trace to {path!r} (No such file or directory); choose another --trace\n"
    )


@pytest.mark.parametrize(
    ("flags", "env", "says"),
    [
        (["--path", "ws"], {}, "path must start with '/'"),
        (
            [],
            {"TRIO_AGENT_IDLE_TIMEOUT_S": "soon"},
            "TRIO_AGENT_IDLE_TIMEOUT_S='soon' is not valid",
        ),
        (["--openai-base-url", "ftp://x"], {}, "openai_base_url must be an http:// or https://"),
    ],
    ids=["flag", "variable", "openai"],
)
def test_a_bad_setting_is_one_line_and_exit_status_2(flags, env, says):
    done = serve(*flags, env=env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"invalid setting: {says}")


def test_a_flag_serve_does_not_know_gets_serves_usage(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: trio-agent serve [-h] [--host HOST]")
    assert err.endswith("trio-agent serve: error: unrecognized arguments: --bogus\n")


def test_bench_help_is_trio_agent_benchs(capfd):
    assert main(["bench", "--help"]) == 0
    assert capfd.readouterr().out.startswith("usage: trio-agent bench [-h] [--quick]")
    assert main(["bench", "--bogus"]) == 2
    assert capfd.readouterr().err.endswith(
        "trio-agent bench: error: unrecognized arguments: --bogus\n"
    )


# --------------------------------------------------------------------------- the help is true


@pytest.fixture(scope="module")
def serve_help() -> str:
    """``trio-agent serve --help``, its whitespace made single spaces."""
    done = subprocess.run(
        [sys.executable, "-m", "trio_agent", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )
    return " ".join(done.stdout.split())


def _help_of(serve_help: str, flag: str) -> str:
    """The help of ``flag``: from its name to the next flag's."""
    start = serve_help.index(f" {flag} ", serve_help.index("options:"))
    return serve_help[start : serve_help.index(" --", start + len(flag) + 2)]


def test_serve_help_names_the_openai_agents_variables(serve_help):
    assert "TRIO_AGENT_MAX_SESSIONS" in serve_help
    assert "except the openai agent's upstream, OPENAI_BASE_URL" in serve_help
    assert "OPENAI_API_KEY, read from the environment only" in serve_help


async def test_frames_are_logged_at_trace_as_the_log_level_help_says(
    start_server, log_records, serve_help
):
    help_text = _help_of(serve_help, "--log-level")
    assert "TRACE (DEBUG, and the client's frames as read" in help_text
    assert "frame" not in help_text.split("DEBUG (")[-1]
    server = await start_server()
    async with connect(server) as c:
        await c.request("r1", options={"words": 1, "words_per_s": 0})
        await c.until_done("r1")
    levels = {r["level"].name for r in log_records if r["message"] == "frame read"}
    assert levels == {"TRACE"}


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="Linux TCP_NOTSENT_LOWAT")
async def test_notsent_lowat_0_leaves_trios_16_kib_as_the_help_says(serve_help):
    assert "0: Trio's own setting, 16384" in _help_of(serve_help, "--tcp-notsent-lowat")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with (
        listeners[0],
        await trio.open_tcp_stream("127.0.0.1", port),
        await listeners[0].accept() as accepted,
    ):
        lowat = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
    with socket.socket() as plain:  # what the system gives a socket nobody set it on
        system = plain.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
    assert lowat == 16384
    assert system != lowat
