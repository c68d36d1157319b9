"""Agents with deliberate behaviours, for the server tests."""

from __future__ import annotations

import trio

from trio_agent import AgentError, AgentRequest, ResponseStream


class Probe:
    """Records what happened to the requests of an agent: started, cancelled, finished."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.any_cancelled = trio.Event()


def endless(probe: Probe | None = None, interval: float = 0.01):
    """Sends a word every ``interval`` seconds until cancelled."""

    async def agent(request: AgentRequest, stream: ResponseStream) -> None:
        if probe:
            probe.started.append(request.request_id)
        try:
            i = 0
            while True:
                await stream.send(f" w{i}")
                i += 1
                await trio.sleep(interval)
        except trio.Cancelled:
            if probe:
                probe.cancelled.append(request.request_id)
                probe.any_cancelled.set()
            raise
        finally:
            if probe:
                probe.finished.append(request.request_id)

    return agent


async def fails_after_two(request: AgentRequest, stream: ResponseStream) -> None:
    """Sends two frames, then raises."""
    await stream.send("a")
    await stream.send("b")
    raise ValueError("boom")


async def refuses(request: AgentRequest, stream: ResponseStream) -> None:
    """Ends its request with a coded error of its own."""
    raise AgentError("UPSTREAM_ERROR", "the upstream said no")


def stubborn(hold_s: float, probe: Probe | None = None):
    """Streams until cancelled, then ignores the cancellation for ``hold_s`` seconds
    (a shielded cleanup that takes too long) and tries to send once more."""

    async def agent(request: AgentRequest, stream: ResponseStream) -> None:
        try:
            while True:
                await stream.send(" x")
                await trio.sleep(0.01)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.sleep(hold_s)
                try:
                    await stream.send(" after the end")
                except trio.ClosedResourceError:
                    if probe:
                        probe.cancelled.append(request.request_id)
            raise

    return agent
