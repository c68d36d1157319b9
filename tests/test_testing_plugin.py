"""trio_agent.testing: check_agent catches broken agents, and the pytest fixtures work."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from trio_agent import AgentRequest, ResponseStream, ServerConfig
from trio_agent import agents as builtin
from trio_agent.agents.openai.agent import OpenAIAgent, OpenAIConfig
from trio_agent.server.lanes import OutboundLanes
from trio_agent.testing import SCENARIOS, AgentCheckFailed, check_agent
from trio_agent.testing.fake_openai import FakeOpenAI, Script

SLOW_LOREM = {"words": 12, "words_per_s": 20}
ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- good agents


async def test_the_builtin_agents_pass(autojump_clock):
    report = await check_agent(builtin.lorem, options=SLOW_LOREM)
    assert list(report.scenarios) == list(SCENARIOS)
    assert report.scenarios["complete"] == "completed, 12 frames"
    assert report.scenarios["interrupt early"] == "ACK interrupted=['early'], DONE interrupted"
    assert report.scenarios["concurrent interrupts"] == "ACK counts [1, 0]"
    assert report.scenarios["timeout"].startswith("DONE timeout")
    assert report.longest_step_s < 0.2
    await check_agent(builtin.echo, input="one two three")


async def test_an_endless_agent_passes_with_completes_false(autojump_clock):
    async def endless(request: AgentRequest, stream: ResponseStream) -> None:
        while True:
            await stream.send(" more")
            await trio.sleep(0.01)

    report = await check_agent(endless, completes=False)
    assert report.scenarios["complete"] == "streams (an endless agent)"


async def twenty_words(stream: ResponseStream) -> None:
    """What every agent below streams: a word every 10 ms."""
    for i in range(20):
        await stream.send(f" w{i}")
        await trio.sleep(0.01)


async def test_a_careful_agent_with_bounded_cleanup_passes(autojump_clock):
    async def careful(request: AgentRequest, stream: ResponseStream) -> None:
        try:
            await twenty_words(stream)
        finally:
            with trio.move_on_after(0.5, shield=True):
                await trio.sleep(0.1)  # closes its upstream

    await check_agent(careful)


async def test_the_openai_agent_passes_against_a_paced_upstream(nursery):
    """A real agent behind a real socket (so on the real clock), entered as the
    server enters it: every scenario has something to cut."""
    fake = await nursery.start(FakeOpenAI(default=Script.counting(20, tokens_per_s=200)).run)
    agent = OpenAIAgent(OpenAIConfig(openai_base_url=fake.base_url, openai_model="fake-model"))
    report = await check_agent(agent, name="openai")
    assert report.scenarios["complete"] == "completed, 20 frames"
    assert report.scenarios["interrupt late"] == "ACK interrupted=['late'], DONE interrupted"
    assert report.scenarios["timeout"].startswith("DONE timeout")
    # Every request that was cut closed its upstream connection early.
    assert sum(r.disconnected.is_set() for r in fake.requests) >= 5


async def test_unknown_scenarios_are_refused():
    with pytest.raises(ValueError, match="unknown scenarios"):
        await check_agent(builtin.lorem, scenarios=["complete", "telepathy"])


# --------------------------------------------------------------------------- broken agents


async def swallows_cancelled(request: AgentRequest, stream: ResponseStream) -> None:
    for i in range(20):
        try:
            await stream.send(f" w{i}")
            await trio.sleep(0.01)
        except BaseException:  # "log and carry on": swallows Cancelled too
            pass


async def never_checkpoints(request: AgentRequest, stream: ResponseStream) -> None:
    time.sleep(0.15)  # a blocking call: holds the whole event loop
    for i in range(5):
        await stream.send(f" w{i}")


async def sends_after_being_cancelled(request: AgentRequest, stream: ResponseStream) -> None:
    try:
        await twenty_words(stream)
    finally:
        with trio.move_on_after(1.0, shield=True):
            await stream.send(" [interrupted]")


async def turns_cancelled_into_an_error(request: AgentRequest, stream: ResponseStream) -> None:
    try:
        await twenty_words(stream)
    except trio.Cancelled:
        raise RuntimeError("stopped") from None


async def cleans_up_too_slowly(request: AgentRequest, stream: ResponseStream) -> None:
    try:
        await twenty_words(stream)
    finally:
        with trio.move_on_after(10, shield=True):
            await trio.sleep(4)  # bounded, but longer than the session waits


async def test_an_agent_that_swallows_cancelled_is_caught(autojump_clock):
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(swallows_cancelled)
    failure = caught.value
    assert failure.scenario == "conduct"
    text = str(failure)
    assert text.startswith("check_agent(swallows_cancelled): scenario 'conduct' broke 2 rules")
    assert "x agent rule: let trio.Cancelled propagate" in text
    assert "it was cancelled in its 2nd `await stream.send(...)` and returned normally" in text
    assert "Catch `Exception`, not `BaseException`" in text
    assert "x agent rule: send nothing once the request has been cancelled" in text
    assert "It caught Cancelled and carried on." in text
    assert "send #2 ' w1'   <- cancelled inside this send" in text
    assert "send ' w2' after swallowing Cancelled" in text


async def test_an_agent_that_never_checkpoints_is_caught(autojump_clock):
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(never_checkpoints, max_step_s=0.05)
    failure = caught.value
    assert failure.scenario == "complete"
    [finding] = failure.findings
    assert finding.rule == "agent rule: reach a checkpoint often (never hold the event loop)"
    assert "without reaching a checkpoint (task 'request complete'" in finding.detail
    assert "trio.to_thread.run_sync(fn, abandon_on_cancel=True)" in finding.detail


async def test_a_long_step_that_does_not_come_back_is_reported_not_failed(autojump_clock):
    """A step is timed on the wall clock, and a busy machine can stretch one: a long
    step is only a failure if it happens again when the scenario is played again."""
    blocked = []

    async def blocks_once(request: AgentRequest, stream: ResponseStream) -> None:
        if not blocked:
            blocked.append(True)
            time.sleep(0.1)
        await twenty_words(stream)

    report = await check_agent(blocks_once, max_step_s=0.05)
    assert re.fullmatch(
        r"completed, 20 frames \(one step of [\d,]+ ms without a checkpoint, not on a second run\)",
        report.scenarios["complete"],
    )
    assert report.longest_step_s >= 0.1


async def test_an_agent_that_sends_after_being_cancelled_is_caught(autojump_clock):
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(sends_after_being_cancelled)
    [finding] = caught.value.findings
    assert finding.rule == "agent rule: send nothing once the request has been cancelled"
    assert "From a shielded block" in finding.detail
    assert "send ' [interrupted]' from a shielded block" in finding.evidence


async def test_the_server_side_trace_catches_a_late_send_too(autojump_clock):
    """Without the conduct scenario, the wire scenarios see it through the trace."""
    scenarios = [s for s in SCENARIOS if s != "conduct"]
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(sends_after_being_cancelled, scenarios=scenarios)
    failure = caught.value
    assert failure.scenario == "interrupt early"
    [finding] = failure.findings
    assert (
        "stream.send was called 1 time(s) after the request ended (interrupted)" in finding.detail
    )
    assert "stream.send for early after the request ended (ClosedResourceError)   <--" in (
        finding.evidence
    )


async def test_an_agent_that_turns_cancelled_into_an_error_is_caught(autojump_clock):
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(turns_cancelled_into_an_error)
    [finding] = caught.value.findings
    assert finding.rule == "agent rule: let trio.Cancelled propagate"
    assert "raised RuntimeError('stopped') instead of letting trio.Cancelled out" in finding.detail


async def test_an_agent_whose_cleanup_outlasts_the_grace_is_caught(autojump_clock):
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(cleans_up_too_slowly)
    [finding] = caught.value.findings
    assert finding.rule.startswith("guarantee 10: an agent that ignores cancellation")
    assert "it took 4 s to finish after being cancelled; the server waits 2 s" in finding.detail


async def test_a_disconnect_that_leaves_the_session_open_is_caught(autojump_clock):
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(cleans_up_too_slowly, scenarios=["disconnect mid-stream"])
    text = str(caught.value)
    assert "scenario 'disconnect mid-stream' broke 2 rules" in text
    assert "x guarantee 9: when a client disconnects" in text
    assert "the session was still open 3 s after its client vanished" in text
    assert "x guarantee 10: an agent that ignores cancellation cannot wedge the session" in text
    assert "shielded cleanup 'wait for request tasks' ran out of time   <--" in text


async def test_a_broken_guarantee_is_named_with_the_frames_around_it(autojump_clock, monkeypatch):
    """A server that forgets to drop a cut request's queued frames sends them after
    the ACK and the DONE: check_agent names the guarantee and shows where."""
    monkeypatch.setattr(OutboundLanes, "discard", lambda self, record: 0)
    # A write per frame: the writer waits for the (unbuffered) client on every
    # frame, so the lane is full when the INTERRUPT is read. (With batches, the
    # writer may still be taking frames into one, the lane empty.)
    config = ServerConfig(stream_lane_capacity=4, write_batch_frames=1)
    with pytest.raises(AgentCheckFailed) as caught:
        await check_agent(builtin.lorem, options={"words": 40, "words_per_s": 0}, config=config)
    failure = caught.value
    assert failure.scenario == "interrupt early"
    [finding] = failure.findings
    assert finding.rule == "guarantee 1: every accepted REQUEST ends with exactly one DONE"
    # How many frames were already on their way when the INTERRUPT was read depends
    # on the writer's batching; the first kept frame's seq is that count.
    match = re.match(r"STREAM seq=(\d+) of 'early' after its DONE", finding.detail)
    assert match, finding.detail
    n = int(match.group(1))
    lines = finding.evidence.splitlines()
    assert lines[0] == "frames around it:"
    assert any("<- INTERRUPT_ACK early ref=c1 interrupted=['early']" in line for line in lines)
    assert any(f"<- DONE early interrupted frames={n}" in line for line in lines)
    assert any(
        line.endswith(
            f"<- STREAM early seq={n}   <-- guarantee 1: STREAM seq={n} of 'early' after its DONE"
        )
        for line in lines
    )


# --------------------------------------------------------------------------- fixtures


async def test_agent_client_talks_to_agent_server(agent_server, agent_client, autojump_clock):
    assert sorted(agent_client.agents) == ["echo", "lorem"]
    response = await agent_client.request("one two three", agent="echo")
    assert [chunk.delta async for chunk in response] == ["one", " two", " three"]
    assert (await response.done()).status == "completed"
    events = agent_server.tracer.events
    assert [e["seq"] for e in events if e["event"] == "stream_written"] == [0, 1, 2]


@pytest.mark.parametrize("agent_transport", ["socket"])
@pytest.mark.parametrize("agent_server_agents", [{"mine": builtin.lorem}])
async def test_fixtures_can_be_parametrized(agent_server, agent_client):
    assert list(agent_client.agents) == ["mine"]
    response = await agent_client.request("x", agent="mine", options={"words": 50})
    async for _ in response:
        handle = await agent_client.interrupt(response.request_id)
        break
    ack = await handle.acknowledged()
    assert ack.interrupted == (response.request_id,) or ack.interrupted == [response.request_id]
    assert agent_server.stats()["sessions"] == 1


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_docs_testing_md_works_as_written(tmp_path):
    """The ten lines of docs/testing.md and its fixture examples, run in a fresh pytest
    that knows the plugin only through its entry point."""
    blocks = python_blocks(ROOT / "docs" / "testing.md")
    ten_lines = blocks[0]
    assert len(ten_lines.strip().splitlines()) <= 10
    override = next(b for b in blocks if "def agent_server_agents" in b)
    with_client = next(b for b in blocks if "def test_my_agent_streams_and_stops" in b)
    (tmp_path / "my_project.py").write_text(
        textwrap.dedent(
            """
            import trio

            class MyAgent:
                \"\"\"Says each word of its input, a few times over.\"\"\"

                async def __call__(self, request, stream):
                    for _ in range(3):
                        for word in request.input.split():
                            await stream.send(word + " ")
                            await trio.sleep(0.01)
            """
        )
    )
    (tmp_path / "test_my_agent.py").write_text("\n\n".join([ten_lines, override, with_client]))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
