"""``trio-agent chat``, driven through a real pipe against a real server.

The chat reads an OS pipe and the server listens on a loopback socket, both in
the test's own Trio run; the test writes the next line only once the transcript
shows what it waits for (no sleeps). The last test runs the command in its own
process and leaves it with Ctrl-C.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
import trio
from testing_agents import Probe, endless

from trio_agent import AgentRequest, ResponseStream
from trio_agent import agents as builtin
from trio_agent.cli.chat import run_chat
from trio_agent.cli.main import main

LONG_QUESTION = "tell me everything"
ACK_CUT_REQ_1 = r"\[ack in \d+\.\d ms: the server cut req-1(; \d+ late chunks? dropped)?\]"


def scripted(probe: Probe | None = None):
    """Streams forever for LONG_QUESTION; echoes anything else."""
    forever = endless(probe)

    async def agent(request: AgentRequest, stream: ResponseStream) -> None:
        if request.input == LONG_QUESTION:
            await forever(request, stream)
        else:
            await builtin.echo(request, stream)

    return agent


class Transcript(io.StringIO):
    """What the chat prints, with a way to wait until something shows up."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self._changed.set()
        self._changed = trio.Event()
        return written

    @property
    def lines(self) -> list[str]:
        return self.getvalue().splitlines()

    async def wait_for(self, seen: Callable[[str], bool]) -> None:
        while not seen(self.getvalue()):
            await self._changed.wait()


class Keyboard:
    """The write end of the chat's stdin pipe."""

    def __init__(self) -> None:
        read_fd, self._write_fd = os.pipe()
        self.stdin = trio.lowlevel.FdStream(read_fd)

    def type(self, text: str) -> None:
        os.write(self._write_fd, text.encode())

    def close(self) -> None:
        os.close(self._write_fd)


async def chat(server, keyboard: Keyboard, out: Transcript, **options) -> int:
    options = {"agent": "scripted", "echo_input": True, "heartbeat_s": None, **options}
    with trio.fail_after(20):
        return await run_chat(server.url, stdin=keyboard.stdin, out=out, **options)


def index(lines: list[str], pattern: str) -> int:
    for i, line in enumerate(lines):
        if re.fullmatch(pattern, line):
            return i
    raise AssertionError(f"no line matches {pattern!r} in:\n" + "\n".join(lines))


async def test_two_lines_in_quick_succession_cut_the_first_and_complete_the_second(
    start_server,
):
    server = await start_server({"scripted": scripted()})
    keyboard, out = Keyboard(), Transcript()
    keyboard.type(f"{LONG_QUESTION}\nhello there\n")
    keyboard.close()
    assert await chat(server, keyboard, out) == 0
    lines = out.lines
    asked = index(lines, f"> {LONG_QUESTION}")
    cut = index(lines, r"(.* )?\[cut after \d+ chunks?\]")
    asked_again = index(lines, "> hello there")
    answer = index(lines, "hello there")
    assert asked < cut < asked_again < answer
    # The first request was really cut on the server, and the ACK said so.
    index(lines, ACK_CUT_REQ_1)
    assert not any("[cut" in line for line in lines[cut + 1 :])


async def test_the_cut_shows_where_the_reply_stopped(start_server):
    probe = Probe()
    server = await start_server({"scripted": scripted(probe)})
    keyboard, out = Keyboard(), Transcript()
    async with trio.open_nursery() as nursery:

        async def typist() -> None:
            keyboard.type(f"{LONG_QUESTION}\n")
            await out.wait_for(lambda text: " w2" in text)
            keyboard.type("hello\n")
            keyboard.close()

        nursery.start_soon(typist)
        assert await chat(server, keyboard, out) == 0
    lines = out.lines
    cut_line = lines[index(lines, r"( w\d+)+ \[cut after \d+ chunks\]")]
    words = re.findall(r" w\d+", cut_line)
    assert words[:3] == [" w0", " w1", " w2"]
    assert cut_line.endswith(f"[cut after {len(words)} chunks]")
    index(lines, ACK_CUT_REQ_1)
    assert lines[-1] == "hello"
    assert probe.cancelled == ["req-1"]


async def test_commands(start_server):
    server = await start_server({"scripted": scripted(), "echo": builtin.echo})
    keyboard, out = Keyboard(), Transcript()
    async with trio.open_nursery() as nursery:

        async def typist() -> None:
            keyboard.type(f"/agent\n/agent nope\n/stop\n{LONG_QUESTION}\n")
            await out.wait_for(lambda text: " w1" in text)
            keyboard.type("/stop\n")
            await out.wait_for(lambda text: "[ack in" in text)
            keyboard.type("/agent echo\nsay it back\n")
            await out.wait_for(lambda text: "\nsay it back\n" in text)
            keyboard.type("/help\n/what\n/quit\nnever sent\n")
            # The chat leaves at /quit, without reading on: the pipe stays open.

        nursery.start_soon(typist)
        assert await chat(server, keyboard, out) == 0
    keyboard.close()
    lines = out.lines
    index(lines, r"\[agent: scripted \(agents: scripted, echo\)\]")
    index(lines, r"\[no agent 'nope' here \(agents: scripted, echo\)\]")
    assert index(lines, "> /stop") < index(lines, r"\[nothing to stop\]")
    stopped = index(lines, r"( w\d+)+ \[cut after \d+ chunks\]")
    assert stopped < index(lines, r"\[ack in .*: the server cut req-1\]")
    assert index(lines, r"\[agent: echo\]") < index(lines, "say it back")
    helped = index(lines, "> /help")
    for command in ("/agent", "/voice", "/stop", "/help", "/quit"):
        index(lines[helped:], rf"  {command} .*")
    index(lines, re.escape("[unknown command /what: /help lists the commands]"))
    assert lines[-1] == "> /quit"


async def test_unknown_agent_and_no_server_are_reported(start_server, capsys):
    server = await start_server({"scripted": scripted()})
    keyboard, out = Keyboard(), Transcript()
    assert await chat(server, keyboard, out, agent="nope") == 2
    assert "no agent 'nope' here" in capsys.readouterr().err

    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
        assert await run_chat(url, stdin=keyboard.stdin, out=out) == 1
    assert "trio-agent chat: cannot connect to" in capsys.readouterr().err
    keyboard.close()


async def test_a_server_going_away_is_reported(start_server, capsys):
    server = await start_server({"scripted": scripted()})
    keyboard, out = Keyboard(), Transcript()
    async with trio.open_nursery() as nursery:

        async def typist() -> None:
            keyboard.type(f"\n{LONG_QUESTION}\n")  # an empty line does nothing
            await out.wait_for(lambda text: " w1" in text)
            server.shutdown()

        nursery.start_soon(typist)
        assert await chat(server, keyboard, out) == 1
    keyboard.close()
    assert out.lines[-1].endswith("[shutdown: server shutting down]")
    assert "the server closed the connection (1001" in capsys.readouterr().err


def test_chat_help_names_the_default_url(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "ws://127.0.0.1:8765/ws" in shown
    # Plain text, not the reST of a docstring, and the commands a chat takes.
    assert "``" not in shown
    assert ":param" not in shown
    assert ":class:" not in shown
    for command in ("/agent", "/voice", "/stop", "/help", "/quit", "Esc", "Ctrl-C"):
        assert re.search(rf"^  {re.escape(command)} ", shown, re.MULTILINE), command
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--token", "not a token"])
    assert exited.value.code == 2
    assert "token characters" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
async def test_chat_command_in_its_own_process_leaves_cleanly_on_ctrl_c(start_server):
    probe = Probe()
    # Without resumption, so that the session ends with the connection however the
    # process leaves (whether its close frame gets out first is not what this checks).
    server = await start_server({"scripted": scripted(probe)}, resume_window_s=0)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_agent", "chat", server.url, "--agent", "scripted"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        await proc.stdin.send_all(f"{LONG_QUESTION}\n".encode())
        seen = b""
        with trio.fail_after(20):
            while b" w2" not in seen:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"the chat exited early: {seen!r}"
                seen += chunk
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
            while chunk := await proc.stderr.receive_some():
                assert b"Traceback" not in chunk
            await server.wait_idle()  # the connection was closed
        assert probe.cancelled == ["req-1"]
        assert b"> tell me everything" in seen  # stdin is a pipe: the input is echoed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
