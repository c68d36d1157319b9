"""The scenarios :func:`~trio_agent.testing.check_agent` plays, one method each.

Each wire scenario runs the agent behind a fresh traced
:class:`~trio_agent.server.agent_server.AgentServer` and plays a raw client
through a :class:`~trio_agent.testing.scene.Scene`; "conduct" runs the agent
alone (:mod:`trio_agent.testing.conduct`). docs/testing.md describes each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import trio

from trio_agent.agents import Agent, AgentRequest
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig
from trio_agent.testing.conduct import check_conduct
from trio_agent.testing.rules import AGENT_RULES, GUARANTEES, AgentCheckReport, Finding
from trio_agent.testing.scene import Impatient, Scene, impatient_leaves
from trio_agent.testing.step_timer import StepTimer, WatchingTracer
from trio_agent.testing.wire import WireConnection

#: The agent's name behind the check's server.
AGENT = "agent-under-test"
#: The resume window of the "resume mid-stream" scenario (the others run without resumption).
RESUME_WINDOW_S = 30.0


@dataclass
class Check:
    """One :func:`~trio_agent.testing.check_agent` run: its settings, what it learnt, its report."""

    agent: Agent | None
    label: str
    input: str
    options: dict[str, Any]
    completes: bool
    timeout_s: float
    max_step_s: float
    cleanup_grace_s: float
    patience_s: float
    config: ServerConfig
    #: Times the agent's tasks; every scenario has it watch the tasks that run the agent.
    steps: StepTimer
    report: AgentCheckReport = field(init=False)
    #: STREAM frames of a complete run (learnt by "complete"; None until then).
    frames: int | None = None
    #: The ``ws://`` URL of servers in other processes to check instead (``agent`` is then None).
    url: str | None = None
    #: The agent's name in each REQUEST.
    agent_name: str = AGENT

    def __post_init__(self) -> None:
        self.report = AgentCheckReport(self.label)

    async def run(self, scenario: str) -> list[Finding]:
        if scenario == "conduct":
            return await self._conduct()
        tracer = WatchingTracer(self.steps)
        config = self.config
        if scenario == "resume mid-stream":
            config = replace(config, resume_window_s=RESUME_WINDOW_S)
        server: AgentServer | str
        if self.url is not None:
            server = self.url
        else:
            assert self.agent is not None
            server = AgentServer(config, {AGENT: self.agent}, trace=tracer)
        play = {
            "complete": self._complete,
            "interrupt early": self._interrupt_early,
            "interrupt late": self._interrupt_late,
            "interrupt all": self._interrupt_all,
            "concurrent interrupts": self._concurrent_interrupts,
            "timeout": self._timeout,
            "disconnect mid-stream": self._disconnect,
            "resume mid-stream": self._resume,
        }[scenario]
        scene = Scene(scenario, server, tracer, self.patience_s)
        try:
            await play(scene)
        except* Impatient as group:
            # Raised inside the connection's nursery, so it comes out in a group.
            for exc in impatient_leaves(group):
                scene.found(exc.rule, exc.detail)
        self.report.scenarios.setdefault(scenario, "; ".join(scene.notes) or "ok")
        return scene.findings()

    def _request(self, rid: str, **extra: Any) -> dict[str, Any]:
        return {"input": self.input, "agent": self.agent_name, "options": self.options, **extra}

    # -- conduct: the agent alone, cancelled inside stream.send ----------------------

    async def _conduct(self) -> list[Finding]:
        assert self.agent is not None
        request = AgentRequest(
            request_id="conduct", input=self.input, options=self.options, session_id="check"
        )
        return await check_conduct(
            self.agent,
            request,
            sends=self.frames if self.frames is not None else 2,
            patience_s=self.patience_s,
            cleanup_grace_s=self.cleanup_grace_s,
            steps=self.steps,
            report=self.report,
        )

    # -- on the wire ------------------------------------------------------------------

    async def _complete(self, scene: Scene) -> None:
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

    async def _interrupt_after(self, scene: Scene, rid: str, frames: int) -> None:
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

    async def _interrupt_early(self, scene: Scene) -> None:
        await self._interrupt_after(scene, "early", 1)

    async def _interrupt_late(self, scene: Scene) -> None:
        frames = self.frames if self.frames is not None else 3
        await self._interrupt_after(scene, "late", max(frames - 1, 1))

    async def _interrupt_all(self, scene: Scene) -> None:
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

    async def _concurrent_interrupts(self, scene: Scene) -> None:
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

    async def _timeout(self, scene: Scene) -> None:
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

    async def _disconnect(self, scene: Scene) -> None:
        async with trio.open_nursery() as server_side:
            async with scene.connect("memory", serve_in=server_side, whole=False) as wire:
                await wire.send(scene.request_frame(wire, "gone", self._request("gone")))
                await scene.until_streams(wire, "gone", 1)
                await trio.aclose_forcefully(wire.stream)
            assert isinstance(scene.server, AgentServer)
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

    async def _resume(self, scene: Scene) -> None:
        rid = "resumed"
        async with trio.open_nursery() as server_side:
            # Unbuffered, so the server is mid-response when the connection goes.
            async with scene.connect("lockstep", serve_in=server_side, whole=False) as first:
                await first.send(scene.request_frame(first, rid, self._request(rid)))
                if await scene.until_streams(first, rid, 1) < 1:
                    scene.note("the agent finished without a frame; nothing to resume")
                    return
                await trio.aclose_forcefully(first.stream)  # no close frame: resumable
            async with scene.connect("memory", serve_in=server_side) as second:
                await self._resume_on(scene, first, second, rid)

    async def _resume_on(
        self, scene: Scene, first: WireConnection, second: WireConnection, rid: str
    ) -> None:
        # One checker for the whole conversation, told of the new connection, so the
        # guarantees are checked across the resume (no gap, no duplicate, one DONE).
        checker = first.checker
        checker.reconnected()
        checker.received(second.session)
        second.checker = checker
        before = stream_seqs(first, rid)
        await second.send(
            {
                "msg_type": "RESUME",
                "msg_id": second.next_msg_id(),
                "session_id": first.session["session_id"],
                "payload": {
                    "token": first.session["payload"]["resume"]["token"],
                    "last_seq": {rid: before[-1]},
                },
            }
        )
        resumed = await scene.until_type(second, "RESUMED")
        # From RESUMED on, the connection speaks for the old session.
        second.session = {**second.session, "session_id": resumed["session_id"]}
        if self.completes:
            done = await scene.until_done(second, rid)
        else:
            await scene.until_streams(second, rid, 2)
            done = (await scene.until_ack_and_done(second, await second.interrupt(rid), rid))[1]
        await scene.settle(second)
        received = before + stream_seqs(second, rid)
        dones = [
            line.frame
            for line in second.transcript
            if not line.sent
            and line.frame.get("msg_type") == "DONE"
            and line.frame.get("request_id") == rid
        ]
        rule = f"guarantee 11: {GUARANTEES[11]}"
        if received != list(range(len(received))):
            scene.found(rule, f"the STREAM seq received over both connections: {received}", second)
        elif len(dones) != 1 or done["payload"]["frames"] != len(received):
            scene.found(
                rule,
                f"{len(dones)} DONE(s), the first counting {done['payload']['frames']} frames "
                f"for {len(received)} received",
                second,
            )
        scene.note(
            f"resumed after {len(before)} frames; DONE {done['payload']['status']} "
            f"after {done['payload']['frames']}"
        )


def stream_seqs(wire: WireConnection, rid: str) -> list[int]:
    """The ``seq`` of every STREAM frame of ``rid`` received on ``wire``, in order."""
    return [
        line.frame["payload"]["seq"]
        for line in wire.transcript
        if not line.sent
        and line.frame.get("msg_type") == "STREAM"
        and line.frame.get("request_id") == rid
    ]
