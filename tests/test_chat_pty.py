"""``trio-agent chat`` on a terminal: the real command in a pseudo-terminal, against
a real server, asserting on the screen a user would see (drawn by
:class:`pty_terminal.VtScreen`).

The server runs in the test's Trio run; the pty is driven from a worker thread, each
step waiting until the screen shows what it waits for (no sleeps).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
import time

import pytest
import trio
from pty_terminal import PtyProgram, VtScreen

from trio_agent import AgentRequest, ResponseStream
from trio_agent import agents as builtin
from trio_agent.agents.openai.agent import openai_agent_from

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")

LOREM = {word.strip() for word in builtin.lorem_words(200)}
PROMPT = "> "
#: Chunks already on their way when the INTERRUPT landed are dropped, and counted.
ACK_CUT_REQ_1 = r"\[ack in \d+\.\d ms: the server cut req-1(; \d+ late chunks? dropped)?\]"


async def long_lorem(request: AgentRequest, stream: ResponseStream) -> None:
    """The lorem agent, long and slow enough to type over: 2000 words, 20 a second."""
    options = {"words": 2000, "words_per_s": 20}
    await builtin.lorem(dataclasses.replace(request, options=options), stream)


def prompt_row(screen: VtScreen) -> str:
    """The last row with something on it: the input line, when the prompt is up."""
    return next((row for row in reversed(screen.rows) if row), "")


def reply_row(screen: VtScreen) -> str:
    """The row above the input line: the reply's unfinished line while it streams."""
    rows = [row for row in screen.rows if row]
    return rows[-2] if len(rows) >= 2 else ""


def ready(screen: VtScreen) -> bool:
    """The chat has said hello and the prompt is up."""
    return prompt_row(screen) == PROMPT.rstrip() and any(
        "/help lists the commands" in line for line in screen.lines
    )


def only_lorem(text: str) -> bool:
    return all(word in LOREM for word in text.split())


async def in_thread(function, *args):
    return await trio.to_thread.run_sync(function, *args)


@pytest.fixture
async def chat_in_pty(start_server):
    """The chat command in a pty, through ``sh`` so that the exit status and the
    terminal's settings after the chat show on the screen."""
    server = await start_server(
        {"lorem": long_lorem, "echo": builtin.echo, "openai": openai_agent_from(environ={})},
        resume_window_s=0,
    )
    chat = shlex.join([sys.executable, "-m", "trio_agent", "chat", server.url, "--agent", "lorem"])
    program = await in_thread(
        # Wide enough for the longest note on one row.
        # `trap : INT`: a Ctrl-C that reaches the shell too (the chat's terminal is
        # briefly in cooked mode while it prints) does not end the shell.
        lambda: PtyProgram(
            ["/bin/sh", "-c", f'trap : INT; {chat}; echo "exit=$?"; stty -a'], columns=240
        )
    )
    try:
        yield server, program
    finally:
        await in_thread(program.close)


async def test_commands_on_a_terminal(chat_in_pty):
    _, chat = chat_in_pty
    await in_thread(chat.wait_for, ready, "the prompt")
    assert any(line.startswith("[connected to ws://") for line in chat.screen.lines)

    chat.send("/help\r")
    screen = await in_thread(chat.wait_for_text, r"Ctrl-C +leave at once")
    lines = screen.lines
    assert "> /help" in lines
    for command in ("/agent", "/voice", "/stop", "/help", "/quit"):
        assert any(line.lstrip().startswith(command) for line in lines), command

    chat.send("/what\r")
    await in_thread(
        chat.wait_for_text, re.escape("[unknown command /what: /help lists the commands]")
    )

    chat.send("/agent\r")
    screen = await in_thread(chat.wait_for_text, r"^\[agent: lorem \(agents: lorem, echo; ")
    listed = next(line for line in screen.lines if line.startswith("[agent: lorem"))
    assert "openai unavailable: no upstream configured" in listed

    chat.send("/agent openai\r")
    screen = await in_thread(
        chat.wait_for,
        lambda s: ready(s) and any(line.startswith("[agent 'openai'") for line in s.lines),
        "the refusal, and the prompt back",
    )
    refused = next(line for line in screen.lines if line.startswith("[agent 'openai'"))
    assert refused.startswith("[agent 'openai' is unavailable: no upstream configured")
    assert refused.endswith("(agents: lorem, echo)]")

    # Up brings back what was typed before; the line is edited, not sent.
    chat.send("\x1b[A\x1b[A")
    await in_thread(chat.wait_for, lambda s: prompt_row(s) == "> /agent", "the history")
    chat.send("\x15")  # Ctrl-U: clear the line

    # Esc stops the reply and asks nothing.
    chat.send("a story please\r")
    await in_thread(chat.wait_for, lambda s: "lorem ipsum dolor" in reply_row(s), "the reply")
    chat.send("\x1b")
    screen = await in_thread(chat.wait_for_text, rf"^{ACK_CUT_REQ_1}$")
    lines = screen.lines
    asked = lines.index("> a story please")
    cut = next(i for i, line in enumerate(lines) if re.search(r"\[cut after \d+ chunks\]$", line))
    assert asked < cut
    assert all(only_lorem(line.rpartition("[cut")[0]) for line in lines[asked + 1 : cut + 1])
    assert not any(line.startswith("> ") for line in lines[cut:])

    chat.send("/quit\r")
    await in_thread(chat.wait_for_text, r"^exit=0$")


async def test_typing_while_a_reply_streams_keeps_the_prompt_and_barges_in(chat_in_pty):
    server, chat = chat_in_pty
    await in_thread(chat.wait_for, ready, "the prompt")
    chat.send("tell me a long story\r")
    await in_thread(chat.wait_for, lambda s: "lorem ipsum dolor" in reply_row(s), "the reply")

    # Type while the reply streams: the keys stay on the input line, the reply goes on
    # above it, and no key lands inside the reply.
    chat.send("and now")
    await in_thread(chat.wait_for, lambda s: prompt_row(s) == "> and now", "the typed keys")
    before = reply_row(chat.screen)
    chat.send(" something else")
    screen = await in_thread(
        chat.wait_for,
        lambda s: prompt_row(s) == "> and now something else" and reply_row(s) != before,
        "the reply streaming on above the typed line",
    )
    assert only_lorem(reply_row(screen)), reply_row(screen)
    shown = screen.lines
    assert shown.count("> tell me a long story") == 1

    # Enter barges in: the cut reply is marked, the question is on a line of its
    # own under it, the server's ACK is noted, and the prompt is back at the bottom.
    chat.send("\r")
    screen = await in_thread(
        chat.wait_for,
        lambda s: (
            "> and now something else" in s.lines[:-1]
            and any(line.startswith("[ack in ") for line in s.lines)
            and prompt_row(s).startswith(PROMPT.rstrip())
        ),
        "the cut, the question, the ACK and the prompt back",
    )
    lines = screen.lines
    asked = lines.index("> and now something else")
    cut = lines[asked - 1]
    assert re.fullmatch(r"(.* )?\[cut after \d+ chunks\]", cut), cut
    assert only_lorem(cut.rpartition("[cut")[0])
    streamed = lines[lines.index("> tell me a long story") + 1 : asked]
    assert all(only_lorem(line.rpartition("[cut")[0]) for line in streamed), streamed
    assert any(re.fullmatch(ACK_CUT_REQ_1, line) for line in lines), lines

    # The second reply streams; Ctrl-C leaves at once, with the terminal restored.
    await in_thread(
        chat.wait_for,
        lambda s: "lorem ipsum" in reply_row(s) and "[ack in" not in reply_row(s),
        "the second reply",
    )

    def leave() -> float:
        started = time.monotonic()
        chat.send("\x03")
        chat.wait_for_text(r"^exit=\d+$", timeout=10)
        return time.monotonic() - started

    took = await in_thread(leave)
    print(f"Ctrl-C to exit: {took * 1000:.0f} ms")
    screen = await in_thread(chat.wait_for_text, r"\becho\w* .*\bextproc\b")  # stty's last row
    assert "exit=0" in screen.lines
    assert took < 0.2, f"Ctrl-C took {took * 1000:.0f} ms to leave"
    settings = " ".join(screen.lines[screen.lines.index("exit=0") + 1 :])
    for restored in ("icanon", "echo", "isig", "icrnl"):
        assert re.search(rf"(?<![-\w]){restored}\b", settings), f"{restored} not restored"
    # The cursor is visible again and bracketed paste is off.
    assert chat.raw.rfind("\x1b[?25h") > chat.raw.rfind("\x1b[?25l")
    assert chat.raw.rfind("\x1b[?2004l") > chat.raw.rfind("\x1b[?2004h")
    with trio.fail_after(10):
        await server.wait_idle()  # the chat closed its connection
