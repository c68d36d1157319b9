"""One scenario on the wire: its server, its raw connection, its findings.

A :class:`Scene` opens connections to the check's server, waits (each wait bounded
by the check's patience) for the frames a scenario needs, and turns what the
:class:`~trio_agent.protocol.guarantees.GuaranteeChecker` and the server's trace
saw into :class:`~trio_agent.testing.rules.Finding` objects. docs/testing.md
describes the scenarios.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio

from trio_agent.observability.timeline import describe
from trio_agent.observability.trace import MemoryTracer, TraceEvent
from trio_agent.server.agent_server import AgentServer
from trio_agent.testing.rules import AGENT_RULES, GUARANTEES, Finding
from trio_agent.testing.wire import Frame, Transport, WireConnection, open_wire, open_wire_url


class Impatient(Exception):
    """A wait of a scene ran out of patience: ``rule`` is what the agent failed to give."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


class Scene:
    """One scenario: its server, its connection, its findings."""

    def __init__(
        self,
        name: str,
        server: AgentServer | str,
        tracer: MemoryTracer,
        patience_s: float,
    ) -> None:
        self.name = name
        #: The check's server, or the ``ws://`` URL of one in other processes.
        self.server = server
        self.tracer = tracer
        self.patience_s = patience_s
        self.wire: WireConnection | None = None
        self._found: list[Finding] = []
        self.notes: list[str] = []

    def connect(
        self, transport: Transport, serve_in: trio.Nursery | None = None, *, whole: bool = True
    ) -> Connection:
        """Open a connection for this scene. ``whole=False``: the client leaves in the
        middle, so what a finished conversation owes it is not checked."""
        return Connection(self, transport, serve_in, whole)

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
        raise Impatient(
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

    async def until_type(self, wire: WireConnection, msg_type: str) -> Frame:
        return await self._until(wire, f"a {msg_type}", lambda f: f.get("msg_type") == msg_type)

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


class Connection:
    """``async with scene.connect(...) as wire``: open_wire, remembered by the scene."""

    def __init__(
        self, scene: Scene, transport: Transport, serve_in: trio.Nursery | None, whole: bool
    ) -> None:
        server = scene.server
        # A server in other processes is reached over TCP, whatever the transport asked.
        self._cm = (
            open_wire_url(server)
            if isinstance(server, str)
            else open_wire(server, transport, serve_in=serve_in)
        )
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


def impatient_leaves(group: BaseExceptionGroup[Impatient]) -> list[Impatient]:
    """Every :class:`Impatient` in ``group``, however deeply nested."""
    found: list[Impatient] = []
    for exc in group.exceptions:
        found += impatient_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _around(events: Sequence[TraceEvent], event: TraceEvent, context: int = 4) -> list[str]:
    index = list(events).index(event)
    chosen = events[max(index - context, 0) : index + context + 1]
    return ["what the server saw:"] + [
        f"  {e['task']:<14} {describe(e)}" + ("   <--" if e is event else "") for e in chosen
    ]
