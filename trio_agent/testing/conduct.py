"""The "conduct" scenario: the agent alone, cancelled inside one of its ``stream.send`` calls.

The server hides much of an agent's misbehaviour from the client, so this runs
the agent directly and watches what it does once cancelled (docs/testing.md,
"What check_agent does"; docs/cancellation.md for the fixes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from trio_agent.agents import Agent, AgentRequest, RequestOutcome, json_fields
from trio_agent.protocol.messages import DonePayload, DoneStatus
from trio_agent.testing.rules import AGENT_RULES, GUARANTEES, AgentCheckReport, Finding
from trio_agent.testing.step_timer import StepTimer


async def check_conduct(
    agent: Agent,
    request: AgentRequest,
    *,
    sends: int,
    patience_s: float,
    cleanup_grace_s: float,
    steps: StepTimer,
    report: AgentCheckReport,
) -> list[Finding]:
    """Run ``agent`` on ``request`` with a stream that cancels it inside a send; judge what it does.

    ``sends`` is how many times the agent sends in a complete run (it is cancelled
    in the second send, or the first if it sends once; never if it never sends).
    ``steps`` times the agent's task; ``report`` gets a line about how it went.

    Cancellation: the agent runs in a nursery of the caller's task, bounded by
    ``patience_s``; cancelling the caller cancels the agent.
    """
    if sends == 0:
        return []  # it never sends: nothing to cancel it in
    stream = ConductStream(cancel_at=min(2, sends))
    raised: list[Exception] = []
    scope = trio.CancelScope()
    stream.scope = scope

    async def run_agent() -> None:
        steps.watch(trio.lowlevel.current_task())
        with scope:
            try:
                await agent(request, stream)
            except Exception as exc:
                raised.append(exc)

    with trio.move_on_after(patience_s) as patience:
        async with trio.open_nursery() as nursery:
            # Named like the server's request tasks, for the step timer's findings.
            nursery.start_soon(run_agent, name="request conduct")
    stream.report_done()
    findings = []
    where = f"its {_ordinal(stream.cancel_at)} `await stream.send(...)`"
    if patience.cancelled_caught:
        return [
            Finding(
                "conduct",
                f"agent rule: {AGENT_RULES['complete']}",
                f"still running after {patience_s:g} s",
                stream.story(),
            )
        ]
    if stream.cancelled_at is None:
        report.scenarios["conduct"] = f"returned after {len(stream.sent)} sends"
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
    if took > cleanup_grace_s:
        findings.append(
            Finding(
                "conduct",
                f"guarantee 10: {GUARANTEES[10]}",
                f"it took {took:.3g} s to finish after being cancelled; the server waits "
                f"{cleanup_grace_s:g} s. Bound cleanup: "
                "`with trio.move_on_after(t, shield=True):`.",
                stream.story(),
            )
        )
    report.scenarios["conduct"] = f"cancelled in {where}, finished {took:.3g} s later"
    return findings


class ConductStream:
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


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")
