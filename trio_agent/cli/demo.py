"""``trio-agent demo``: watch an interrupt travel through the cancel-scope tree.

Starts a traced server in this process, plays a scripted conversation against it,
and tells the story of each INTERRUPT. ``docs/cancellation.md`` walks through it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from trio_agent.agents import AgentRequest, ResponseStream, lorem_words, shielded_cleanup
from trio_agent.observability.timeline import (
    describe,
    interrupt_stories,
    load_trace,
    narrate,
    narrate_events,
    timeout_story,
)
from trio_agent.observability.timeline_plot import PlotUnavailable, draw_timeline
from trio_agent.observability.trace import JsonLinesTracer
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig
from trio_agent.testing.wire import Frame, Transport, WireConnection, open_wire

#: How long the demo client takes to read one frame (its pace is the backpressure).
READ_PACE_S = 0.001


async def narrator(request: AgentRequest, stream: ResponseStream) -> None:
    """Placeholder words at a pace; when cancelled, saves its partial reply (shielded, bounded).

    Options: ``words`` (40), ``words_per_s`` (400; 0 = as fast as backpressure allows).
    """
    words = int(request.options.get("words", 40))
    pace = float(request.options.get("words_per_s", 400))
    try:
        for word in lorem_words(words):
            await stream.send(word)
            if pace:
                await trio.sleep(1 / pace)
    except trio.Cancelled:
        # What a real agent does here: close its upstream call, store what it
        # had produced. Shielded, so the cancellation that brought us here does
        # not cut the cleanup short; bounded, so it cannot hold the session.
        with shielded_cleanup(0.25, "save the partial reply"):
            await trio.sleep(0.002)
        raise


class _Scenes:
    """The scripted client. Each scene prints one line about what the client saw."""

    def __init__(self, wire: WireConnection, say: Callable[[str], None]) -> None:
        self.wire = wire
        self.say = say
        self.frames: dict[str, int] = {}
        self.done: dict[str, Frame] = {}
        self.acks: dict[str, Frame] = {}

    async def read(self, *, paced: bool = True) -> Frame:
        if paced:
            await trio.sleep(READ_PACE_S)
        frame = await self.wire.receive()
        kind, rid = frame.get("msg_type"), frame.get("request_id")
        if kind == "STREAM" and rid:
            self.frames[rid] = self.frames.get(rid, 0) + 1
        elif kind == "DONE" and rid:
            self.done[rid] = frame
        elif kind == "INTERRUPT_ACK":
            self.acks[str(frame.get("ref"))] = frame
        return frame

    async def read_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self.read()

    async def barge_in(self, request_id: str | None, reason: str) -> str:
        """INTERRUPT, then read without pausing until its ACK is in.

        A client that barges in stops playing the reply, so it reads what is
        still in flight at once: the ACK arrives as soon as the server writes it.
        """
        msg_id = await self.wire.interrupt(request_id, reason=reason)
        while msg_id not in self.acks:
            await self.read(paced=False)
        return msg_id

    def ended(self, rid: str) -> str:
        payload = self.done[rid]["payload"]
        return f"DONE {rid} {payload['status']} (frames={payload['frames']})"

    async def run(self) -> None:
        w = self.wire
        await w.request("s1", "tell me something", agent="narrator", options={"words": 12})
        await self.read_until(lambda: "s1" in self.done)
        self.say(f"1. stream           REQUEST s1 -> {self.ended('s1')}")

        await w.request(
            "a", "a long answer", agent="narrator", options={"words_per_s": 2000, "words": 400}
        )
        await w.request(
            "b", "a short one", agent="narrator", options={"words_per_s": 500, "words": 30}
        )
        await self.read_until(lambda: self.frames.get("a", 0) >= 8)
        cut_a = await self.barge_in("a", "USER_NEW_INPUT")
        await self.read_until(lambda: "a" in self.done and "b" in self.done)
        ack = self.acks[cut_a]["payload"]
        self.say(
            f"2. interrupt one    INTERRUPT {cut_a} for a while a and b stream: "
            f"ACK interrupted={ack['interrupted']}; {self.ended('a')}; b went on: {self.ended('b')}"
        )

        await w.request("c", "next question", agent="narrator", options={"words": 6})
        await self.read_until(lambda: "c" in self.done)
        self.say(f"3. new request      REQUEST c right after -> {self.ended('c')}")

        await w.request("d", "one", agent="narrator", options={"words_per_s": 1000, "words": 400})
        await w.request("e", "two", agent="narrator", options={"words_per_s": 1000, "words": 400})
        await self.read_until(lambda: self.frames.get("d", 0) >= 3 and self.frames.get("e", 0) >= 3)
        cut_all = await w.interrupt(reason="STOP_BUTTON")
        await w.request("f", "three", agent="narrator", options={"words": 5})
        while cut_all not in self.acks:
            await self.read(paced=False)
        await self.read_until(
            lambda: all(rid in self.done for rid in "def") and cut_all in self.acks
        )
        ack = self.acks[cut_all]["payload"]
        self.say(
            f"4. interrupt all    INTERRUPT {cut_all} (all), REQUEST f sent right behind it: "
            f"ACK interrupted={sorted(ack['interrupted'])}; {self.ended('f')}, not cut"
        )

        await w.request(
            "g",
            "slow",
            agent="narrator",
            timeout_s=0.05,
            options={"words_per_s": 100, "words": 100},
        )
        await self.read_until(lambda: "g" in self.done)
        self.say(f"5. timeout          REQUEST g with timeout_s=0.05 -> {self.ended('g')}")


async def run_demo(
    *,
    trace_path: Path,
    png_path: Path | None,
    transport: Transport = "lockstep",
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Run the scripted conversation, then narrate and draw it. Returns the PNGs written.

    The trace file is written afresh. Without matplotlib the story is still told,
    and ``say`` is told why there is no picture.
    """
    await trio.Path(trace_path).unlink(missing_ok=True)
    tracer = JsonLinesTracer(trace_path)
    config = replace(ServerConfig(port=0), stream_lane_capacity=8, default_agent="narrator")
    server = AgentServer(config, {"narrator": narrator}, trace=tracer)
    say(f"trio-agent demo: a server in this process, traced to {trace_path}")
    say(
        "transport: "
        + (
            "loopback TCP"
            if transport == "socket"
            else "in-memory, unbuffered: the client reads a frame every "
            f"{READ_PACE_S * 1e3:g} ms, which is the agents' backpressure"
        )
    )
    say("")
    try:
        async with trio.open_nursery() as nursery:
            if transport == "socket":
                await nursery.start(server.run)
            async with open_wire(server, transport) as wire:
                await _Scenes(wire, say).run()
            await server.wait_idle()
            server.shutdown("demo over")  # returns server.run, if it was started
    finally:
        tracer.close()
    broken = wire.finish()
    if broken:
        say("guarantees broken in this run (please report it):")
        say(wire.excerpt())

    events = await trio.to_thread.run_sync(load_trace, trace_path)
    stories = interrupt_stories(events)
    for story in stories:
        say("")
        say(f"---- the story of INTERRUPT {story.msg_id} " + "-" * 50)
        say(narrate(story))
    say("")
    say("---- the timeout of g " + "-" * 50)
    # With its deadline marked: nothing else shows when Trio's clock fired.
    timeout = timeout_story(events, "g")
    delivered = next((e for e in timeout if e["event"] == "cancel_delivered"), None)
    deadline = next((e for e in timeout if e["event"] == "deadline_passed"), None)
    if delivered is not None:
        say(f"no INTERRUPT here: the request scope's own deadline expired; {describe(delivered)}")
        if deadline is not None:
            say("times after the deadline passed:")
        zero = int((deadline or delivered)["t_us"])
        say("\n".join(narrate_events(timeout[-9:], zero_us=zero)))

    written: list[Path] = []
    if png_path is not None and stories:
        say("")
        targets = [(stories[0], png_path)]
        if len(stories) > 1:
            targets.append(
                (stories[1], png_path.with_name(f"{png_path.stem}-all{png_path.suffix}"))
            )
        for story, path in targets:
            try:
                written.append(await trio.to_thread.run_sync(draw_timeline, story, path))
            except PlotUnavailable as exc:
                say(str(exc))
                break
            say(f"picture: {path}  (INTERRUPT {story.msg_id})")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("trio-agent-demo.png"),
        help="where to draw the first interrupt; the interrupt-all goes next to it as *-all.png",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=Path("trio-agent-demo.jsonl"),
        help="where to write the trace (JSON lines; replaced on each run)",
    )
    parser.add_argument(
        "--socket",
        action="store_true",
        help="talk to the server over loopback TCP instead of an unbuffered in-memory stream",
    )
    parser.add_argument("--no-png", action="store_true", help="tell the story as text only")


def run_from_args(args: Any) -> int:
    """The body of ``trio-agent demo``."""
    trio.run(
        lambda: run_demo(
            trace_path=args.trace,
            png_path=None if args.no_png else args.out,
            transport="socket" if args.socket else "lockstep",
        )
    )
    return 0
