"""How fast does an INTERRUPT reach the model? Interrupt-to-upstream-disconnect, measured.

Three processes, as in real life: the fake OpenAI-compatible upstream streaming
200 tokens/s, the server (this one), and a WebSocket client. Each round starts a
reply, reads a few of its STREAM frames, sends an INTERRUPT and records:

* the ACK latency (client sends the INTERRUPT -> client has the ACK), for the
  ``openai`` agent and, as the baseline, for ``lorem`` (no upstream at all);
* **read -> upstream EOF**: from the server reading the INTERRUPT to the upstream
  reading end-of-file on its connection (the target: p99 <= 5 ms);
* sent -> upstream EOF: the same from the client's side (adds one WebSocket hop);
* ``DONE.upstream_close_ms`` (the close itself) and ACK -> DONE (the deferred DONE).

Every figure comes from the same run, so the ratios compare like with like. Times
are ``time.monotonic()``, which both processes share. Logging is off (a log line
per frame would measure the terminal).

    .venv/bin/python scripts/bench_upstream.py            # a table
    .venv/bin/python scripts/bench_upstream.py --json     # the same figures as JSON

:func:`measure_upstream_interrupts` is the entry point for other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from trio_agent import AgentServer, ServerConfig
from trio_agent import agents as builtin
from trio_agent.agents.openai.agent import OpenAIAgent, OpenAIConfig
from trio_agent.server.session import Session
from trio_agent.testing.wire import WireConnection, open_wire_url

# The bench helpers beside this script, also when it is loaded by path (as its test does).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from interrupt_bench.stats import summarize

SCRIPT = str(Path(__file__).resolve())

#: The target: the upstream connection closed within 5 ms (p99) of the
#: server reading the INTERRUPT.
TARGET_P99_MS = 5.0


@contextmanager
def interrupt_read_times() -> Iterator[dict[str, float]]:
    """Instrumentation: when the server read each INTERRUPT (``time.monotonic()``), by msg_id.

    The reader calls ``Session._interrupt`` right after reading the frame (with the
    ``read_at`` it logs the ACK latency from); this wraps it for the run.
    """
    reads: dict[str, float] = {}
    original = Session._interrupt

    def recording(self: Session, message: Any, *, read_at: float) -> None:
        reads[message.msg_id] = time.monotonic()
        original(self, message, read_at=read_at)

    Session._interrupt = recording  # type: ignore[method-assign,assignment]
    try:
        yield reads
    finally:
        Session._interrupt = original  # type: ignore[method-assign]


@asynccontextmanager
async def json_lines_process(
    argv: list[str],
) -> AsyncIterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
    """Run ``argv``; yield a channel of the JSON objects it prints, one per line.
    The process is killed when the block ends."""
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
    lines, received = trio.open_memory_channel[dict[str, Any]](math.inf)

    async def read_lines() -> None:
        assert process.stdout is not None
        pending = b""
        async for data in process.stdout:
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                lines.send_nowait(json.loads(line))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_lines)
            yield received
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()


async def _round(
    conn: WireConnection,
    request_id: str,
    agent: str,
    options: dict[str, Any],
    wait_frames: int,
) -> dict[str, Any]:
    """One request cut after ``wait_frames`` STREAM frames; ``time.monotonic()`` times.

    ``stale`` counts the cut request's STREAM frames that arrived after its ACK
    (there must be none)."""
    payload = {"input": "tell me a long story", "agent": agent, "options": options}
    await conn.send({"msg_type": "REQUEST", "request_id": request_id, "payload": payload})
    seen = 0
    while seen < wait_frames:
        frame = await conn.receive()
        seen += frame["msg_type"] == "STREAM" and frame["request_id"] == request_id
    msg_id = f"i-{request_id}"
    sent = time.monotonic()
    await conn.send({"msg_type": "INTERRUPT", "msg_id": msg_id, "request_id": request_id})
    ack = done = None
    stale = 0
    done_payload: dict[str, Any] = {}
    while done is None:
        frame = await conn.receive()
        if frame["msg_type"] == "INTERRUPT_ACK" and frame["ref"] == msg_id:
            ack = time.monotonic()
        elif frame["msg_type"] == "STREAM" and frame["request_id"] == request_id:
            stale += ack is not None
        elif frame["msg_type"] == "DONE" and frame["request_id"] == request_id:
            done = time.monotonic()
            done_payload = frame["payload"]
    assert ack is not None
    return {
        "agent": agent,
        "msg_id": msg_id,
        "sent": sent,
        "ack": ack,
        "done": done,
        "payload": done_payload,
        "stale": stale,
        "violations": [str(v) for v in conn.unreported_violations()],
    }


async def run_client(url: str, rounds: int, tokens_per_s: float, seed: int) -> None:
    """The client side (``--client URL``): alternate lorem and openai rounds, and print
    each round's times as a JSON line.

    Every frame in both directions goes through the connection's guarantee
    checker: a server that broke a guarantee while being timed would be counted,
    whatever its latency."""
    rng = random.Random(seed)
    async with open_wire_url(url) as conn:
        for i in range(rounds):
            wait = rng.randint(3, 10)
            lorem = {"words": 5000, "words_per_s": tokens_per_s}
            for result in (
                await _round(conn, f"l{i}", "lorem", lorem, wait),
                await _round(conn, f"o{i}", "openai", {}, wait),
            ):
                print(json.dumps(result), flush=True)


def _ms(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``seconds``, in milliseconds."""
    summary = summarize(seconds, scale=1000)
    return {"p50_ms": summary["p50"], "p99_ms": summary["p99"], "max_ms": summary["max"]}


async def measure_upstream_interrupts(
    rounds: int = 200, tokens_per_s: float = 200.0, seed: int = 0
) -> dict[str, Any]:
    """Run the benchmark and return its figures (milliseconds; see the module docstring).

    ``rounds`` interrupts per agent; each cuts a reply after 3 to 10 frames. The
    upstream and the client run in processes of their own; the server in this one.
    """
    logger.disable("trio_agent")
    try:
        return await _measure(rounds, tokens_per_s, seed)
    finally:
        logger.enable("trio_agent")


async def _measure(rounds: int, tokens_per_s: float, seed: int) -> dict[str, Any]:
    python = sys.executable
    # 5000 tokens is 25 s of reply at 200 tokens/s; every round cuts it after 3-10.
    upstream_argv = [python, "-m", "trio_agent.testing.fake_openai", "--port", "0", "--report"]
    upstream_argv += ["--tokens", "5000", "--tokens-per-s", str(tokens_per_s)]
    openai_rounds, lorem_rounds = [], []
    with interrupt_read_times() as reads:
        async with (
            json_lines_process(upstream_argv) as upstream,
            trio.open_nursery() as nursery,
        ):
            with trio.fail_after(10):
                base_url = (await upstream.receive())["base_url"]
            agent = OpenAIAgent(OpenAIConfig(openai_base_url=base_url, openai_model="fake"))
            server = AgentServer(
                replace(ServerConfig(port=0), idle_timeout_s=0),
                {"openai": agent, "lorem": builtin.lorem},
            )
            await nursery.start(server.run)
            client_argv = [python, SCRIPT, "--client", server.url]
            client_argv += ["--rounds", str(rounds), "--tokens-per-s", str(tokens_per_s)]
            client_argv += ["--seed", str(seed)]
            async with json_lines_process(client_argv) as client:
                for _ in range(2 * rounds):
                    with trio.fail_after(30):
                        result = await client.receive()
                    if result["agent"] == "lorem":
                        lorem_rounds.append(result)
                        continue
                    # The DONE waits for the close, so disconnects come in round order.
                    with trio.fail_after(5):
                        result["eof"] = (await upstream.receive())["monotonic"]
                    openai_rounds.append(result)
            nursery.cancel_scope.cancel(reason="benchmark over")
    ack_lorem = _ms([r["ack"] - r["sent"] for r in lorem_rounds])
    ack_openai = _ms([r["ack"] - r["sent"] for r in openai_rounds])
    read_to_eof = _ms([r["eof"] - reads[r["msg_id"]] for r in openai_rounds])
    sent_to_eof = _ms([r["eof"] - r["sent"] for r in openai_rounds])
    close = _ms([r["payload"]["upstream_close_ms"] / 1000 for r in openai_rounds])
    ack_to_done = _ms([r["done"] - r["ack"] for r in openai_rounds])
    cancelled = sum(r["payload"].get("upstream_cancelled") is True for r in openai_rounds)
    every_round = lorem_rounds + openai_rounds
    violations = [v for r in every_round for v in r["violations"]]
    return {
        "rounds": rounds,
        "stale_frames": sum(r["stale"] for r in every_round),
        "violations": len(violations),
        "first_violations": violations[:5],
        "load_average": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "tokens_per_s": tokens_per_s,
        "upstream_cancelled_rounds": cancelled,
        "rows": {
            "ack_latency_lorem": ack_lorem,
            "ack_latency_openai": ack_openai,
            "interrupt_read_to_upstream_eof": read_to_eof,
            "interrupt_sent_to_upstream_eof": sent_to_eof,
            "done_upstream_close_ms": close,
            "ack_to_done_openai": ack_to_done,
        },
        "ratios": {
            "ack_p50_openai_over_lorem": round(ack_openai["p50_ms"] / ack_lorem["p50_ms"], 2),
            "upstream_eof_p99_over_ack_p99": round(read_to_eof["p99_ms"] / ack_openai["p99_ms"], 2),
        },
        "target": {
            "interrupt_read_to_upstream_eof_p99_ms": TARGET_P99_MS,
            "met": read_to_eof["p99_ms"] <= TARGET_P99_MS,
        },
    }


_LABELS: dict[str, str] = {
    "ack_latency_lorem": "ACK latency, lorem (baseline: no upstream)",
    "ack_latency_openai": "ACK latency, openai",
    "interrupt_read_to_upstream_eof": "INTERRUPT read -> upstream sees EOF",
    "interrupt_sent_to_upstream_eof": "INTERRUPT sent -> upstream sees EOF",
    "done_upstream_close_ms": "DONE.upstream_close_ms (the close itself)",
    "ack_to_done_openai": "ACK -> DONE, openai (deferred DONE)",
}


def table(figures: dict[str, Any], write: Callable[[str], Any] = print) -> None:
    """Print ``figures`` as the human-readable table."""
    write(
        f"interrupt -> upstream disconnect: fake upstream at {figures['tokens_per_s']:g} tokens/s, "
        f"{figures['rounds']} interrupts per agent, loopback TCP, upstream, server and client "
        f"in three processes, logging off, "
        f"load average {figures['load_average']:.2f} on {figures['cpus']} CPUs"
    )
    write(f"{'':46} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for key, row in figures["rows"].items():
        write(f"{_LABELS[key]:46} {row['p50_ms']:9.3f} {row['p99_ms']:9.3f} {row['max_ms']:9.3f}")
    ratios = figures["ratios"]
    write(
        f"ratios: ACK p50 openai/lorem = {ratios['ack_p50_openai_over_lorem']:.2f}; "
        f"upstream EOF p99 / ACK p99 = {ratios['upstream_eof_p99_over_ack_p99']:.2f}"
    )
    target = figures["target"]
    p99 = figures["rows"]["interrupt_read_to_upstream_eof"]["p99_ms"]
    verdict = "met" if target["met"] else "MISSED"
    write(
        f"target: INTERRUPT read -> upstream EOF p99 <= {TARGET_P99_MS:g} ms: {verdict} "
        f"({p99:.3f} ms); upstream_cancelled in {figures['upstream_cancelled_rounds']}/"
        f"{figures['rounds']} DONEs"
    )
    write(
        f"STREAM frames after their ACK: {figures['stale_frames']}; "
        f"guarantees broken: {figures['violations']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200, help="interrupts per agent")
    parser.add_argument("--tokens-per-s", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        trio.run(run_client, args.client, args.rounds, args.tokens_per_s, args.seed)
        return 0
    figures = trio.run(measure_upstream_interrupts, args.rounds, args.tokens_per_s, args.seed)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        table(figures)
    clean = figures["stale_frames"] == 0 and figures["violations"] == 0
    return 0 if figures["target"]["met"] and clean else 1


if __name__ == "__main__":
    sys.exit(main())
