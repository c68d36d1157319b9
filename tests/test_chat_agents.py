"""Which agents the chat can ask, and why not: on the chat's side (``/agent``,
``chat --agent``) and in the server's UNKNOWN_AGENT error; ``/voice``; and how the
terminal chat keeps a streaming reply's unfinished line narrower than the terminal.
"""

from __future__ import annotations

import re

import pytest
import trio
from test_chat import Keyboard, Transcript, index

from trio_agent import agents as builtin
from trio_agent.agents.openai.agent import openai_agent_from
from trio_agent.cli import chat_prompt
from trio_agent.cli.chat import run_chat
from trio_agent.cli.chat_help import agent_problem, choose_agent, describe_agents
from trio_agent.cli.chat_prompt import LiveLine
from trio_agent.protocol.messages import AgentEntry
from trio_agent.testing.wire import connect

NO_KEY = AgentEntry(available=False, unavailable_reason="set OPENAI_API_KEY")
AGENTS = {"lorem": AgentEntry(), "openai": NO_KEY, "echo": AgentEntry()}


def test_the_agents_are_listed_with_why_one_is_unavailable():
    assert describe_agents(AGENTS) == "agents: lorem, echo; openai unavailable: set OPENAI_API_KEY"
    assert describe_agents({"lorem": AgentEntry()}) == "agents: lorem"
    assert describe_agents({"x": AgentEntry(available=False)}) == (
        "agents: none available; x unavailable: no reason given"
    )


def test_an_unavailable_agent_is_refused_with_its_reason_not_listed_as_there():
    assert agent_problem(AGENTS, "lorem") is None
    assert agent_problem(AGENTS, "openai") == (
        "agent 'openai' is unavailable: set OPENAI_API_KEY (agents: lorem, echo)"
    )
    assert agent_problem(AGENTS, "nope") == (
        "no agent 'nope' here (agents: lorem, echo; openai unavailable: set OPENAI_API_KEY)"
    )


@pytest.mark.parametrize(
    ("asked", "default", "chosen"),
    [
        (None, "lorem", "lorem"),
        (None, "openai", "lorem"),  # the default cannot run: the first that can
        (None, None, "lorem"),
        ("echo", "lorem", "echo"),
        ("openai", "lorem", None),
    ],
)
def test_the_agent_the_chat_starts_with(asked, default, chosen):
    assert choose_agent(AGENTS, asked, default)[0] == chosen
    assert choose_agent({"openai": NO_KEY}, None, "openai") == (
        None,
        "no agent here can be asked (agents: none available; "
        "openai unavailable: set OPENAI_API_KEY)",
    )


async def test_the_server_names_only_the_agents_that_can_be_asked(start_server):
    server = await start_server({"openai": openai_agent_from(environ={}), "lorem": builtin.lorem})
    async with connect(server) as c:
        await c.request("r1", agent="openai")
        error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
        assert error["payload"]["code"] == "UNKNOWN_AGENT"
        message = error["payload"]["message"]
        assert message.startswith("agent 'openai' is unavailable: no upstream configured")
        assert message.endswith("(available: lorem)")
        await c.request("r2", agent="nope")
        error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
        assert error["payload"]["code"] == "UNKNOWN_AGENT"
        assert (
            error["payload"]["message"] == "agent 'nope' is not available here (available: lorem)"
        )


async def test_chat_with_an_unavailable_agent_fails_at_once_with_the_reason(start_server, capsys):
    server = await start_server({"openai": openai_agent_from(environ={}), "lorem": builtin.lorem})
    keyboard, out = Keyboard(), Transcript()
    with trio.fail_after(20):
        status = await run_chat(
            server.url, stdin=keyboard.stdin, out=out, agent="openai", heartbeat_s=None
        )
    keyboard.close()
    assert status == 2
    err = capsys.readouterr().err
    assert "trio-agent chat: agent 'openai' is unavailable: no upstream configured" in err
    assert out.getvalue() == ""  # nothing was asked


async def test_agent_and_voice_commands(start_server):
    server = await start_server({"openai": openai_agent_from(environ={}), "lorem": builtin.lorem})
    keyboard, out = Keyboard(), Transcript()
    keyboard.type("/agent\n/agent openai\n/voice\n/voice sometimes\n/quit\n")
    with trio.fail_after(20):
        status = await run_chat(
            server.url, stdin=keyboard.stdin, out=out, echo_input=True, heartbeat_s=None
        )
    keyboard.close()
    assert status == 0
    lines = out.lines
    listed = lines[index(lines, r"\[agent: lorem \(agents: lorem; openai unavailable: .*\)\]")]
    assert "no upstream configured" in listed
    refused = lines[index(lines, r"\[agent 'openai' is unavailable: .*\]")]
    assert refused.endswith("(agents: lorem)]")
    index(lines, re.escape("[replies are not spoken (/voice on speaks them)]"))
    index(lines, re.escape("[/voice takes on or off, not 'sometimes']"))


@pytest.mark.parametrize(
    ("deltas", "width", "finished", "unfinished"),
    [
        (["lorem", " ipsum", " dolor"], 40, [], "lorem ipsum dolor"),
        # Broken at the last space that fits in width - 1 cells; the space goes.
        (["aaaa bbbb", " cccc"], 11, ["aaaa bbbb"], "cccc"),
        (["aaaa bbbb cccc dddd eeee"], 11, ["aaaa bbbb", "cccc dddd"], "eeee"),
        # A word longer than the line is cut where the line ends.
        (["abcdefghijklmnop"], 11, ["abcdefghij"], "klmnop"),
        # A newline in the reply finishes its line.
        (["one\ntwo", "\nthree"], 40, ["one", "two"], "three"),
        # Wide characters count two cells.
        (["日本語の文章です"], 11, ["日本語の文"], "章です"),
    ],
)
def test_the_unfinished_line_stays_narrower_than_the_terminal(deltas, width, finished, unfinished):
    live = LiveLine()
    done: list[str] = []
    for delta in deltas:
        done += live.add(delta, width)
    assert done == finished
    assert live.text == unfinished


async def test_a_prompt_that_cannot_run_ends_the_chat_with_the_reason(
    start_server, capsys, monkeypatch
):
    def no_terminal(*args, **kwargs):
        raise OSError("no terminal here")

    monkeypatch.setattr(chat_prompt, "PromptSession", no_terminal)
    server = await start_server({"lorem": builtin.lorem})
    with trio.fail_after(20):
        status = await run_chat(server.url, terminal=True, heartbeat_s=None)
    assert status == 1  # not a hang waiting for input that never comes
    err = capsys.readouterr().err
    assert "trio-agent chat: the terminal's prompt failed: OSError('no terminal here')" in err
