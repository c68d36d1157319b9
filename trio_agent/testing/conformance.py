"""``await check_agent(MyAgent())``: drive an agent through the standard scenarios.

It checks the agent on the wire (behind a real server, every frame watched by a
GuaranteeChecker) and in its conduct (what the trace and a direct run show).
docs/testing.md explains the scenarios, the rules and how to read a failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import trio

from trio_agent.agents import Agent, open_agents
from trio_agent.server.config import ServerConfig
from trio_agent.testing.rules import (
    REMOTE_SCENARIOS,
    SCENARIOS,
    AgentCheckFailed,
    AgentCheckReport,
)
from trio_agent.testing.scenarios import AGENT, Check
from trio_agent.testing.step_timer import StepTimer


async def check_agent(
    agent: Agent | str,
    *,
    name: str | None = None,
    input: str = "Tell me about structured concurrency.",
    options: Mapping[str, Any] | None = None,
    scenarios: Sequence[str] | None = None,
    completes: bool = True,
    timeout_s: float = 0.05,
    max_step_s: float = 0.2,
    cleanup_grace_s: float = 2.0,
    patience_s: float = 30.0,
    config: ServerConfig | None = None,
    url: str | None = None,
) -> AgentCheckReport:
    """Run ``agent`` through the standard scenarios; raise :class:`AgentCheckFailed` if it
    breaks a guarantee or a rule of conduct. Returns a report when all is well.

    :param name: what to call the agent in messages (default: its type or function name).
    :param input: the REQUEST input every scenario sends.
    :param options: the REQUEST options every scenario sends.
    :param scenarios: a subset of :data:`SCENARIOS` to run (default: all of them;
        with ``url``, all of :data:`REMOTE_SCENARIOS`).
    :param completes: ``False`` for an agent that streams until it is stopped: the
        "complete" scenario then only checks that it streams, and "interrupt late"
        interrupts after a few frames.
    :param timeout_s: the ``timeout_s`` of the "timeout" scenario's REQUEST.
    :param max_step_s: the longest the agent may run without reaching a checkpoint
        (wall clock, whatever clock the test uses).
    :param cleanup_grace_s: how long a cancelled agent may take to finish (the
        server's ``cleanup_grace_s``).
    :param patience_s: the most any one wait of a scenario may take.
    :param config: server settings to check under (default: the defaults with a
        stream lane of 4, so that backpressure comes into play).
    :param url: check servers that run in other processes instead, at this ``ws://``
        URL (a cluster behind its load balancer: the ``agent_cluster`` fixture);
        ``agent`` is then the name of the agent they serve, and only the scenarios
        that need nothing but the wire can run (:data:`REMOTE_SCENARIOS`).

    An agent that is an async context manager is entered for the whole check, as
    the server enters it for as long as it serves: pass one that is not open yet.

    Cancellation: this runs scenarios in the caller's task and nurseries; cancel it
    like anything else. It adds a Trio instrument while it runs and removes it after.
    """
    possible = SCENARIOS if url is None else REMOTE_SCENARIOS
    scenarios = possible if scenarios is None else scenarios
    unknown = [s for s in scenarios if s not in possible]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; choose from {list(possible)}")
    if (url is not None) != isinstance(agent, str):
        raise TypeError("pass an agent, or the name of the agent served at url= with url=")
    label = (
        name
        or (agent if isinstance(agent, str) else None)
        or getattr(agent, "__name__", None)
        or type(agent).__name__
    )
    steps = StepTimer()
    check = Check(
        agent=None if isinstance(agent, str) else agent,
        label=label,
        input=input,
        options=dict(options or {}),
        completes=completes,
        timeout_s=timeout_s,
        max_step_s=max_step_s,
        cleanup_grace_s=cleanup_grace_s,
        patience_s=patience_s,
        config=replace(
            config or ServerConfig(stream_lane_capacity=4),
            port=0,
            # The scenarios drop connections and expect the session to end with
            # them: what an agent must survive. "resume mid-stream" turns
            # resumption on for itself (scenarios.RESUME_WINDOW_S).
            resume_window_s=0,
            cleanup_grace_s=cleanup_grace_s,
            default_agent=AGENT,
        ),
        steps=steps,
        url=url,
        agent_name=agent if isinstance(agent, str) else AGENT,
    )
    trio.lowlevel.add_instrument(steps)
    try:
        async with open_agents([] if isinstance(agent, str) else [agent]):
            await _run_scenarios(check, scenarios, max_step_s)
    finally:
        trio.lowlevel.remove_instrument(steps)
    return check.report


async def _run_scenarios(check: Check, scenarios: Sequence[str], max_step_s: float) -> None:
    steps = check.steps
    for scenario in SCENARIOS:
        if scenario not in scenarios:
            continue
        steps.reset()
        findings = await check.run(scenario)
        long_step = steps.findings(scenario, max_step_s)
        longest = steps.longest
        if long_step and not findings:
            # A step is timed on the wall clock, so a busy machine that takes the CPU
            # away mid-step looks like a blocking agent. A blocking agent blocks every
            # time: play the scenario once more and believe the long step only if it
            # comes back. (One that blocks only once, say on a lazy first
            # connection, shows in the report.)
            steps.reset()
            findings = await check.run(scenario)
            long_step = steps.findings(scenario, max_step_s)
            if not findings and not long_step:
                check.report.scenarios[scenario] += (
                    f" (one step of {longest * 1e3:,.0f} ms without a checkpoint,"
                    " not on a second run)"
                )
        if findings or long_step:
            raise AgentCheckFailed(check.label, scenario, findings + long_step)
        check.report.longest_step_s = max(check.report.longest_step_s, longest, steps.longest)
