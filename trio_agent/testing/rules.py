"""The rules :func:`~trio_agent.testing.check_agent` holds an agent to, and how a broken one is reported.

docs/testing.md explains each scenario and rule; docs/protocol.md states the guarantees.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Every scenario, in the order they run.
SCENARIOS = (
    "complete",
    "conduct",
    "interrupt early",
    "interrupt late",
    "interrupt all",
    "concurrent interrupts",
    "timeout",
    "disconnect mid-stream",
    "resume mid-stream",
)

#: The scenarios that can run against servers in other processes (``check_agent(url=...)``):
#: "conduct" runs the agent itself and "disconnect mid-stream" watches the server's
#: sessions, so both need it in this process; "resume mid-stream" needs the resume
#: to reach the session (one server, or a cluster whose core is in place).
REMOTE_SCENARIOS = (
    "complete",
    "interrupt early",
    "interrupt late",
    "interrupt all",
    "concurrent interrupts",
    "timeout",
)

#: The protocol guarantees by number, as docs/protocol.md states them (0: the wire format).
GUARANTEES = {
    0: "every frame is a valid protocol-v1 server message",
    1: "every accepted REQUEST ends with exactly one DONE",
    2: "STREAM seq is contiguous from 0 and DONE.frames is what was delivered",
    3: "every INTERRUPT gets exactly one INTERRUPT_ACK",
    4: "the ACK overtakes the STREAM frames still queued",
    5: "after the ACK naming a request, only its DONE follows",
    6: "a request appears in at most one ACK",
    7: "interrupt-all cuts exactly the requests running when it was read",
    9: "when a client disconnects, all its requests are cancelled and no task survives",
    10: "an agent that ignores cancellation cannot wedge the session: cleanup is bounded",
    11: "across a resume, every frame arrives once, in order, with exactly one DONE",
}

#: What an agent must do, beyond what the wire shows (docs/testing.md explains each).
AGENT_RULES = {
    "propagate": "let trio.Cancelled propagate",
    "quiet": "send nothing once the request has been cancelled",
    "checkpoint": "reach a checkpoint often (never hold the event loop)",
    "complete": "finish a request on its own",
}


@dataclass(frozen=True)
class Finding:
    """One broken rule in one scenario, with the evidence."""

    scenario: str
    rule: str
    detail: str
    evidence: str = ""

    def __str__(self) -> str:
        detail = textwrap.fill(
            self.detail,
            width=100,
            initial_indent="    ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
        text = f"  x {self.rule}\n{detail}"
        if self.evidence:
            text += "\n" + "\n".join(f"    {line}" for line in self.evidence.splitlines())
        return text


class AgentCheckFailed(AssertionError):
    """An agent broke a rule; ``findings`` says which, and the message how to read it."""

    def __init__(self, agent: str, scenario: str, findings: Sequence[Finding]) -> None:
        self.agent = agent
        self.scenario = scenario
        self.findings = list(findings)
        plural = "s" if len(self.findings) > 1 else ""
        body = "\n\n".join(str(f) for f in self.findings)
        super().__init__(
            f"check_agent({agent}): scenario {scenario!r} broke {len(self.findings)} rule{plural}\n"
            f"({_SCENARIO_TEXT[scenario]})\n\n{body}\n\n"
            "See docs/testing.md for the scenarios and docs/cancellation.md for the fixes."
        )


@dataclass
class AgentCheckReport:
    """What :func:`check_agent` saw when every scenario passed."""

    agent: str
    #: Scenario -> one line about how it went (``"completed, 12 frames"``).
    scenarios: dict[str, str] = field(default_factory=dict)
    #: The longest the agent ran without reaching a checkpoint, in seconds (wall clock).
    longest_step_s: float = 0.0


_SCENARIO_TEXT = {
    "conduct": "the agent, run directly, is cancelled inside one of its stream.send calls",
    "complete": "one REQUEST, read to its DONE",
    "interrupt early": "INTERRUPT as soon as the first STREAM frame arrives",
    "interrupt late": "INTERRUPT just before the last STREAM frame",
    "interrupt all": "two requests, an interrupt-all, and a REQUEST right behind it",
    "concurrent interrupts": "two INTERRUPTs for the same request, back to back",
    "timeout": "a REQUEST whose timeout_s runs out mid-stream",
    "disconnect mid-stream": "the client vanishes after the first STREAM frame",
    "resume mid-stream": "the connection drops after the first STREAM frame and the client resumes",
}
