"""``await check_agent(MyAgent())``: drive an agent through the standard scenarios.

Two kinds of checks, because an agent can be wrong in two ways:

* **On the wire.** The agent runs behind a real :class:`~trio_agent.AgentServer`
  (over in-memory streams, in the caller's Trio run, traced), and a raw client
  plays each scenario while a :class:`~trio_agent.protocol.guarantees.GuaranteeChecker`
  watches every frame. The server keeps most guarantees whatever the agent does,
  but not all: an agent that holds the event loop delays every ACK, and one that
  ignores cancellation keeps its session from closing.
* **In the agent's conduct.** The server hides much of an agent's misbehaviour
  from the client (it answers the INTERRUPT at once and refuses what a cut
  request sends later), so the trace and a direct run show what the wire cannot:
  a ``Cancelled`` swallowed or turned into another exception, a send after the
  request ended, a step that never reached a checkpoint.

Each broken rule becomes a :class:`Finding`; :func:`check_agent` raises
:class:`AgentCheckFailed` with all the findings of the first scenario that had
any, the frames around the first one, and what to do about it.

Time: every wait is bounded by ``patience_s``. Under
``trio.testing.MockClock(autojump_threshold=0)`` the agent's own sleeps and the
timeouts take no real time, so the whole check is fast and deterministic as long
as the agent waits only on Trio's clock. One limit no library can lift: an agent
that swallows every ``Cancelled`` in an endless loop can never be stopped, and
then neither can the check (run your tests with a timeout, e.g. pytest-timeout).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from trio_agent.agents import Agent, AgentRequest, RequestOutcome, json_fields, open_agents
from trio_agent.observability.timeline import describe
from trio_agent.observability.trace import MemoryTracer, TraceEvent
from trio_agent.protocol.messages import DonePayload, DoneStatus
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig
from trio_agent.testing.wire import Frame, Transport, WireConnection, open_wire

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
}


async def check_agent(
    agent: Agent,
    *,
    name: str | None = None,
    input: str = "Tell me about structured concurrency.",
    options: Mapping[str, Any] | None = None,
    scenarios: Sequence[str] = SCENARIOS,
    completes: bool = True,
    timeout_s: float = 0.05,
    max_step_s: float = 0.2,
    cleanup_grace_s: float = 2.0,
    patience_s: float = 30.0,
    config: ServerConfig | None = None,
) -> AgentCheckReport:
    """Run ``agent`` through the standard scenarios; raise :class:`AgentCheckFailed` if it
    breaks a guarantee or a rule of conduct. Returns a report when all is well.

    :param name: what to call the agent in messages (default: its type or function name).
    :param input: the REQUEST input every scenario sends.
    :param options: the REQUEST options every scenario sends.
    :param scenarios: a subset of :data:`SCENARIOS` to run.
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

    An agent that is an async context manager is entered for the whole check, as
    the server enters it for as long as it serves: pass one that is not open yet.

    Cancellation: this runs scenarios in the caller's task and nurseries; cancel it
    like anything else. It adds a Trio instrument while it runs and removes it after.
    """
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    label = name or getattr(agent, "__name__", None) or type(agent).__name__
    check = _Check(
        agent=agent,
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
            cleanup_grace_s=cleanup_grace_s,
            default_agent=_AGENT,
        ),
    )
    steps = _StepTimer()
    trio.lowlevel.add_instrument(steps)
    try:
        async with open_agents([agent]):
            await _run_scenarios(check, scenarios, steps, max_step_s)
    finally:
        trio.lowlevel.remove_instrument(steps)
    return check.report


async def _run_scenarios(
    check: _Check, scenarios: Sequence[str], steps: _StepTimer, max_step_s: float
) -> None:
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


# --------------------------------------------------------------------------- the scenarios

#: The agent's name behind the check's server.
_AGENT = "agent-under-test"


@dataclass
class _Check:
    agent: Agent
    label: str
    input: str
    options: dict[str, Any]
    completes: bool
    timeout_s: float
    max_step_s: float
    cleanup_grace_s: float
    patience_s: float
    config: ServerConfig
    report: AgentCheckReport = field(init=False)
    #: STREAM frames of a complete run (learnt by "complete"; None until then).
    frames: int | None = None

    def __post_init__(self) -> None:
        self.report = AgentCheckReport(self.label)

    async def run(self, scenario: str) -> list[Finding]:
        if scenario == "conduct":
            return await self._conduct()
        tracer = MemoryTracer()
        server = AgentServer(self.config, {_AGENT: self.agent}, trace=tracer)
        play = {
            "complete": self._complete,
            "interrupt early": self._interrupt_early,
            "interrupt late": self._interrupt_late,
            "interrupt all": self._interrupt_all,
            "concurrent interrupts": self._concurrent_interrupts,
            "timeout": self._timeout,
            "disconnect mid-stream": self._disconnect,
        }[scenario]
        scene = _Scene(scenario, server, tracer, self.patience_s)
        try:
            await play(scene)
        except* _Impatient as group:
            # Raised inside the connection's nursery, so it comes out in a group.
            for exc in _leaves(group):
                scene.found(exc.rule, exc.detail)
        self.report.scenarios.setdefault(scenario, "; ".join(scene.notes) or "ok")
        return scene.findings()

    def _request(self, rid: str, **extra: Any) -> dict[str, Any]:
        return {"input": self.input, "agent": _AGENT, "options": self.options, **extra}

    # -- conduct: the agent alone, cancelled inside stream.send ----------------------

    async def _conduct(self) -> list[Finding]:
        sends = self.frames if self.frames is not None else 2
        if sends == 0:
            return []  # it never sends: nothing to cancel it in
        stream = _ConductStream(cancel_at=min(2, sends))
        request = AgentRequest(
            request_id="conduct", input=self.input, options=self.options, session_id="check"
        )
        raised: list[Exception] = []
        scope = trio.CancelScope()
        stream.scope = scope

        async def run_agent() -> None:
            with scope:
                try:
                    await self.agent(request, stream)
                except Exception as exc:
                    raised.append(exc)

        with trio.move_on_after(self.patience_s) as patience:
            async with trio.open_nursery() as nursery:
                # Named like the server's request tasks, so the step timer watches it.
                nursery.start_soon(run_agent, name="request conduct")
        stream.report_done()
        findings = []
        where = f"its {_ordinal(stream.cancel_at)} `await stream.send(...)`"
        if patience.cancelled_caught:
            return [
                Finding(
                    "conduct",
                    f"agent rule: {AGENT_RULES['complete']}",
                    f"still running after {self.patience_s:g} s",
                    stream.story(),
                )
            ]
        if stream.cancelled_at is None:
            self.report.scenarios["conduct"] = f"returned after {len(stream.sent)} sends"
            return []
        took = trio.current_time() - stream.cancelled_at
        if stream.after_cancel:
            findings.append(
                Finding(
                    "conduct",
                    f"agent rule: {AGENT_RULES['quiet']}",
                    f"after being cancelled in {where}, it called stream.send "
                    f"{len(stream.after_cancel)} more time(s). "
                    + (
                        "It caught Cancelled and carried on."
                        if any(kind == "swallowed" for kind, _ in stream.after_cancel)
                        else "From a shielded block: a cancelled request's frames are refused "
                        "(ClosedResourceError); do not send from cleanup."
                    ),
                    stream.story(),
                )
            )
        if not scope.cancelled_caught and not raised:
            findings.append(
                Finding(
                    "conduct",
                    f"agent rule: {AGENT_RULES['propagate']}",
                    f"it was cancelled in {where} and returned normally: trio.Cancelled was "
                    "caught and not re-raised. Catch `Exception`, not `BaseException` (or a bare "
                    "`except:`), and re-raise trio.Cancelled if you must catch everything.",
                    "" if findings else stream.story(),  # the story is told once
                )
            )
        elif raised and not isinstance(raised[0], trio.ClosedResourceError):
            findings.append(
                Finding(
                    "conduct",
                    f"agent rule: {AGENT_RULES['propagate']}",
                    f"it was cancelled in {where} and raised {raised[0]!r} instead of letting "
                    "trio.Cancelled out. Clean up in `finally:` or `except trio.Cancelled:` "
                    "and re-raise.",
                    stream.story(),
                )
            )
        if took > self.cleanup_grace_s:
            findings.append(
                Finding(
                    "conduct",
                    f"guarantee 10: {GUARANTEES[10]}",
                    f"it took {took:.3g} s to finish after being cancelled; the server waits "
                    f"{self.cleanup_grace_s:g} s. Bound cleanup: "
                    "`with trio.move_on_after(t, shield=True):`.",
                    stream.story(),
                )
            )
        self.report.scenarios["conduct"] = f"cancelled in {where}, finished {took:.3g} s later"
        return findings

    # -- on the wire ------------------------------------------------------------------

    async def _complete(self, scene: _Scene) -> None:
        async with scene.connect("memory") as wire:
            await wire.send(scene.request_frame(wire, "complete", self._request("complete")))
            if self.completes:
                done = await scene.until_done(wire, "complete")
                self.frames = scene.streams(wire, "complete")
                status = done["payload"]["status"]
                if status != "completed":
                    error = done["payload"].get("error")
                    scene.found(
                        f"agent rule: {AGENT_RULES['complete']}",
                        f"the request ended with status {status!r}"
                        + (f" ({error['code']}: {error['message']})" if error else "")
                        + "; pass check_agent an input= and options= the agent accepts",
                        wire,
                    )
                self.report.scenarios["complete"] = f"{status}, {self.frames} frames"
            else:
                await scene.until_streams(wire, "complete", 3)
                self.frames = 3
                await scene.until_ack_and_done(wire, await wire.interrupt("complete"), "complete")
                self.report.scenarios["complete"] = "streams (an endless agent)"

    async def _interrupt_after(self, scene: _Scene, rid: str, frames: int) -> None:
        # Unbuffered: the server's writer waits for this client, so frames queue
        # up in the stream lane and the INTERRUPT has some to overtake.
        async with scene.connect("lockstep") as wire:
            await wire.send(scene.request_frame(wire, rid, self._request(rid)))
            got = await scene.until_streams(wire, rid, frames)
            if got < frames:  # it finished before: nothing left to interrupt
                scene.note(f"the agent finished after {got} frames")
                return
            msg_id = await wire.interrupt(rid)
            ack, done = await scene.until_ack_and_done(wire, msg_id, rid)
            await scene.settle(wire)
            if ack["payload"]["interrupted"] == [rid] and not done["payload"]["interrupted"]:
                scene.found(
                    f"guarantee 5: {GUARANTEES[5]}",
                    "the ACK named the request but its DONE says interrupted: false",
                    wire,
                )
            scene.note(
                f"ACK interrupted={ack['payload']['interrupted']}, DONE {done['payload']['status']}"
            )

    async def _interrupt_early(self, scene: _Scene) -> None:
        await self._interrupt_after(scene, "early", 1)

    async def _interrupt_late(self, scene: _Scene) -> None:
        frames = self.frames if self.frames is not None else 3
        await self._interrupt_after(scene, "late", max(frames - 1, 1))

    async def _interrupt_all(self, scene: _Scene) -> None:
        async with scene.connect("memory") as wire:
            for rid in ("all-1", "all-2"):
                await wire.send(scene.request_frame(wire, rid, self._request(rid)))
            for rid in ("all-1", "all-2"):
                await scene.until_streams(wire, rid, 1)
            msg_id = await wire.interrupt(None, reason="STOP_BUTTON")
            await wire.send(scene.request_frame(wire, "after", self._request("after")))
            ack = await scene.until_ack(wire, msg_id)
            if "after" in ack["payload"]["interrupted"]:
                scene.found(
                    f"guarantee 7: {GUARANTEES[7]}", "the REQUEST sent after it was cut", wire
                )
            if self.completes:
                done = await scene.until_done(wire, "after")
                if done["payload"]["status"] != "completed":
                    scene.found(
                        f"guarantee 7: {GUARANTEES[7]}",
                        f"the REQUEST sent right after the interrupt-all ended "
                        f"{done['payload']['status']!r}",
                        wire,
                    )
            else:
                await scene.until_streams(wire, "after", 1)
                await scene.until_ack_and_done(wire, await wire.interrupt("after"), "after")
            for rid in ("all-1", "all-2"):
                await scene.until_done(wire, rid)
            await scene.settle(wire)
            scene.note(f"ACK interrupted={sorted(ack['payload']['interrupted'])}")

    async def _concurrent_interrupts(self, scene: _Scene) -> None:
        async with scene.connect("memory") as wire:
            await wire.send(scene.request_frame(wire, "twice", self._request("twice")))
            await scene.until_streams(wire, "twice", 1)
            first = await wire.interrupt("twice")
            second = await wire.interrupt("twice")
            acks = [await scene.until_ack(wire, first), await scene.until_ack(wire, second)]
            await scene.until_done(wire, "twice")
            await scene.settle(wire)
            counts = [a["payload"]["interrupted_count"] for a in acks]
            scene.note(f"ACK counts {counts}")

    async def _timeout(self, scene: _Scene) -> None:
        async with scene.connect("memory") as wire:
            extra = {"timeout_s": self.timeout_s}
            await wire.send(scene.request_frame(wire, "slow", self._request("slow", **extra)))
            done = await scene.until_done(wire, "slow")
            status = done["payload"]["status"]
            if status not in ("timeout", "completed"):
                scene.found(
                    f"guarantee 1: {GUARANTEES[1]}",
                    f"a request whose deadline ran out ended {status!r}, not 'timeout'",
                    wire,
                )
            scene.note(f"DONE {status} after {done['payload']['frames']} frames")

    async def _disconnect(self, scene: _Scene) -> None:
        async with trio.open_nursery() as server_side:
            async with scene.connect("memory", serve_in=server_side, whole=False) as wire:
                await wire.send(scene.request_frame(wire, "gone", self._request("gone")))
                await scene.until_streams(wire, "gone", 1)
                await trio.aclose_forcefully(wire.stream)
            with trio.move_on_after(self.cleanup_grace_s + 1.0) as waited:
                await scene.server.wait_idle()
            if waited.cancelled_caught:
                scene.found(
                    f"guarantee 9: {GUARANTEES[9]}",
                    f"the session was still open {self.cleanup_grace_s + 1.0:g} s after its "
                    "client vanished: the agent does not stop when cancelled (an unbounded "
                    "shield, or Cancelled swallowed in a loop)",
                    "\n".join(scene.trace_lines("gone")),
                )
            else:
                scene.note("the session ended with its client")


# --------------------------------------------------------------------------- plumbing


class _Impatient(Exception):
    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


class _Scene:
    """One scenario: its server, its connection, its findings."""

    def __init__(
        self, name: str, server: AgentServer, tracer: MemoryTracer, patience_s: float
    ) -> None:
        self.name = name
        self.server = server
        self.tracer = tracer
        self.patience_s = patience_s
        self.wire: WireConnection | None = None
        self._found: list[Finding] = []
        self.notes: list[str] = []

    def connect(
        self, transport: Transport, serve_in: trio.Nursery | None = None, *, whole: bool = True
    ) -> _Connection:
        """Open a connection for this scene. ``whole=False``: the client leaves in the
        middle, so what a finished conversation owes it is not checked."""
        return _Connection(self, transport, serve_in, whole)

    def request_frame(self, wire: WireConnection, rid: str, payload: dict[str, Any]) -> Frame:
        return {
            "msg_type": "REQUEST",
            "msg_id": wire.next_msg_id(),
            "request_id": rid,
            "payload": payload,
        }

    def note(self, text: str) -> None:
        self.notes.append(text)

    def found(self, rule: str, detail: str, evidence: WireConnection | str | None = None) -> None:
        if isinstance(evidence, WireConnection):
            evidence = "frames around it:\n" + evidence.excerpt()
        self._found.append(Finding(self.name, rule, detail, evidence or ""))

    def streams(self, wire: WireConnection, rid: str) -> int:
        return sum(
            1
            for line in wire.transcript
            if not line.sent
            and line.frame.get("msg_type") == "STREAM"
            and line.frame.get("request_id") == rid
        )

    async def _receive(self, wire: WireConnection, waiting_for: str) -> Frame:
        with trio.move_on_after(self.patience_s) as patience:
            return await wire.receive()
        assert patience.cancelled_caught
        raise _Impatient(
            "a reply in time",
            f"nothing arrived for {self.patience_s:g} s while waiting for {waiting_for}\n"
            + "frames so far:\n"
            + wire.excerpt(len(wire.transcript) - 1),
        )

    async def _until(
        self, wire: WireConnection, waiting_for: str, wanted: Callable[[Frame], bool]
    ) -> Frame:
        """The first frame received so far that is ``wanted``, waiting for it if need be."""
        seen = 0
        while True:
            for line in wire.transcript[seen:]:
                if not line.sent and wanted(line.frame):
                    return line.frame
            seen = len(wire.transcript)
            await self._receive(wire, waiting_for)

    async def until_done(self, wire: WireConnection, rid: str) -> Frame:
        return await self._until(
            wire,
            f"the DONE of {rid!r}",
            lambda f: f.get("msg_type") == "DONE" and f.get("request_id") == rid,
        )

    async def until_ack(self, wire: WireConnection, msg_id: str) -> Frame:
        return await self._until(
            wire,
            f"the INTERRUPT_ACK of {msg_id!r}",
            lambda f: f.get("msg_type") == "INTERRUPT_ACK" and f.get("ref") == msg_id,
        )

    async def until_ack_and_done(
        self, wire: WireConnection, msg_id: str, rid: str
    ) -> tuple[Frame, Frame]:
        return await self.until_ack(wire, msg_id), await self.until_done(wire, rid)

    async def settle(self, wire: WireConnection, quiet_s: float = 0.05) -> None:
        """Read whatever still comes until the connection has been quiet for ``quiet_s``:
        a frame about a request after its end must not go unseen."""
        while True:
            with trio.move_on_after(quiet_s) as quiet:
                await wire.receive()
            if quiet.cancelled_caught:
                return

    async def until_streams(self, wire: WireConnection, rid: str, count: int) -> int:
        """Receive until ``rid`` has ``count`` STREAM frames or ends; return how many it has."""
        while (got := self.streams(wire, rid)) < count:
            done = any(
                not line.sent
                and line.frame.get("msg_type") == "DONE"
                and line.frame.get("request_id") == rid
                for line in wire.transcript
            )
            if done:
                return got
            await self._receive(wire, f"STREAM frame {got + 1} of {rid!r}")
        return count

    def trace_lines(self, request_id: str | None = None) -> list[str]:
        session = self.wire.session.get("session_id") if self.wire is not None else None
        events = [
            e
            for e in self.tracer.events
            if e["session"] == session and (request_id is None or e["request"] == request_id)
        ]
        return ["what the server saw:"] + [f"  {e['task']:<14} {describe(e)}" for e in events[-12:]]

    def findings(self) -> list[Finding]:
        found = list(self._found)
        wire = self.wire
        if wire is not None:
            broken = wire.violations
            if broken:
                first = broken[0]
                found.insert(
                    0,
                    Finding(
                        self.name,
                        f"guarantee {first.guarantee}: {GUARANTEES.get(first.guarantee, '')}",
                        "; ".join(v.message for v in broken[:3]),
                        "frames around it:\n" + wire.excerpt(),
                    ),
                )
            found += self._trace_findings(wire)
        return found

    def _trace_findings(self, wire: WireConnection) -> list[Finding]:
        session = wire.session.get("session_id")
        events = [e for e in self.tracer.events if e["session"] == session]
        found = []
        late = [e for e in events if e["event"] == "late_send"]
        if late:
            found.append(
                Finding(
                    self.name,
                    f"agent rule: {AGENT_RULES['quiet']}",
                    f"stream.send was called {len(late)} time(s) after the request ended "
                    f"({late[0]['status']}); the server refused it (ClosedResourceError). "
                    "Do not send from cleanup code or from tasks that outlive the request.",
                    "\n".join(_around(events, late[0])),
                )
            )
        stuck = [
            e
            for e in events
            if e["event"] == "cleanup_ended" and e.get("timed_out") and not e["request"]
        ]
        if stuck:
            found.append(
                Finding(
                    self.name,
                    f"guarantee 10: {GUARANTEES[10]}",
                    "the session waited its whole cleanup grace for the agent to finish after "
                    "being cancelled. Bound cleanup: `with trio.move_on_after(t, shield=True):`.",
                    "\n".join(_around(events, stuck[0])),
                )
            )
        return found


class _Connection:
    """``async with scene.connect(...) as wire``: open_wire, remembered by the scene."""

    def __init__(
        self, scene: _Scene, transport: Transport, serve_in: trio.Nursery | None, whole: bool
    ) -> None:
        self._cm = open_wire(scene.server, transport, serve_in=serve_in)
        self._scene = scene
        self._whole = whole

    async def __aenter__(self) -> WireConnection:
        wire = await self._cm.__aenter__()
        self._scene.wire = wire
        return wire

    async def __aexit__(self, *exc: Any) -> bool | None:
        result = await self._cm.__aexit__(*exc)
        if self._whole and self._scene.wire is not None:
            self._scene.wire.finish()
        return result


def _leaves(group: BaseExceptionGroup[_Impatient]) -> list[_Impatient]:
    found: list[_Impatient] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _around(events: Sequence[TraceEvent], event: TraceEvent, context: int = 4) -> list[str]:
    index = list(events).index(event)
    chosen = events[max(index - context, 0) : index + context + 1]
    return ["what the server saw:"] + [
        f"  {e['task']:<14} {describe(e)}" + ("   <--" if e is event else "") for e in chosen
    ]


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


class _ConductStream:
    """A ResponseStream that cancels its caller inside the ``cancel_at``-th send.

    Everything else behaves as the server's stream does: DONE fields are checked
    the same way, and ``on_done`` callbacks run when the run is over, with every
    delta sent before the cancellation as delivered.
    """

    request_id = "conduct"

    def __init__(self, cancel_at: int) -> None:
        self.cancel_at = cancel_at
        self.scope: trio.CancelScope | None = None
        self.sent: list[str] = []
        self.cancelled_at: float | None = None
        #: ("swallowed" | "shielded", delta) for each send after the cancellation.
        self.after_cancel: list[tuple[str, str]] = []
        self.done_fields: dict[str, Any] = {}
        self._callbacks: list[Callable[[RequestOutcome], None]] = []

    def add_done_fields(self, **fields: Any) -> None:
        self.done_fields.update(
            json_fields(fields, reserved=DonePayload.model_fields, where="DONE")
        )

    def defer_done(self) -> None:
        """Nothing to defer: there is no client here."""

    def on_done(self, callback: Callable[[RequestOutcome], None]) -> None:
        if self.sent:
            raise RuntimeError("on_done() must be called before the first send()")
        self._callbacks.append(callback)

    def report_done(self) -> None:
        """Run the ``on_done`` callbacks, as the server's writer would with the DONE."""
        outcome = RequestOutcome(
            request_id=self.request_id,
            status=DoneStatus.COMPLETED if self.cancelled_at is None else DoneStatus.INTERRUPTED,
            frames=len(self.sent),
            delivered=tuple(self.sent),
        )
        for callback in self._callbacks:
            callback(outcome)

    async def send(self, delta: str) -> None:
        if not isinstance(delta, str):
            raise TypeError(f"a delta must be a str, not {type(delta).__name__}")
        if self.cancelled_at is not None:
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled:
                self.after_cancel.append(("swallowed", delta))
                raise
            self.after_cancel.append(("shielded", delta))
            raise trio.ClosedResourceError("the request has ended; nothing more is sent for it")
        self.sent.append(delta)
        if len(self.sent) == self.cancel_at:
            assert self.scope is not None
            self.scope.cancel(reason="check_agent: cancelled inside stream.send")
            self.cancelled_at = trio.current_time()
        await trio.lowlevel.checkpoint()  # raises Cancelled right here after the cancel

    def story(self) -> str:
        lines = ["what the agent did:"]
        for i, delta in enumerate(self.sent, 1):
            mark = "   <- cancelled inside this send" if i == self.cancel_at else ""
            lines.append(f"  send #{i} {delta[:40]!r}{mark}")
        for kind, delta in self.after_cancel[:3]:
            how = "after swallowing Cancelled" if kind == "swallowed" else "from a shielded block"
            lines.append(f"  send {delta[:40]!r} {how}")
        if len(self.after_cancel) > 3:
            lines.append(f"  ... and {len(self.after_cancel) - 3} more sends")
        return "\n".join(lines)


class _StepTimer(trio.abc.Instrument):
    """Measures how long each request task runs between two checkpoints (wall clock)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_task = ""
        self._started: dict[trio.lowlevel.Task, float] = {}

    def reset(self) -> None:
        self.longest = 0.0
        self.longest_task = ""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started[task] = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        started = self._started.pop(task, None)
        if started is None:
            return
        took = time.perf_counter() - started
        if took > self.longest and task.name.startswith("request "):
            self.longest = took
            self.longest_task = task.name

    def findings(self, scenario: str, limit: float) -> list[Finding]:
        if self.longest <= limit:
            return []
        return [
            Finding(
                scenario,
                f"agent rule: {AGENT_RULES['checkpoint']}",
                f"the agent ran for {self.longest * 1e3:,.0f} ms without reaching a checkpoint "
                f"(task {self.longest_task!r}; the limit is {limit * 1e3:,.0f} ms). While it runs "
                "nothing else in the process runs, not even the reader that would read an "
                "INTERRUPT. Await something in long computations "
                "(`await trio.lowlevel.checkpoint()`), or move blocking calls to "
                "`await trio.to_thread.run_sync(fn, abandon_on_cancel=True)`.",
            )
        ]
