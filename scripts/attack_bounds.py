#!/usr/bin/env python3
"""Measure what hostile connections cost a server process: RSS, CPU, log bytes.

    .venv/bin/python scripts/attack_bounds.py memory --connections 1
    .venv/bin/python scripts/attack_bounds.py memory --connections 8
    .venv/bin/python scripts/attack_bounds.py frames --connections 2
    .venv/bin/python scripts/attack_bounds.py logs

It starts ``python -m trio_agent serve`` on a free loopback port with its default
limits (extra server flags after ``--``), then attacks it:

* ``memory``: each connection never reads, and sends, under the rate limit
  (20 frames/s), frames whose answers echo as much as they can: INTERRUPTs whose
  ``reason`` fills the message size limit with 4-byte characters, and invalid
  frames whose ``msg_id`` does the same. When the server closes one, it opens
  another. Reports the server's RSS before, at its peak, and after.
* ``frames``: each connection sends a text frame without FIN and then empty
  continuation frames (and then pings), as fast as it can; reports how many
  frames the server read before closing, the server's CPU seconds, and a canary's
  HEARTBEAT round trip meanwhile.
* ``logs``: one connection loops REQUEST + INTERRUPT with a 30,000-character
  reason; reports the log bytes the server wrote.

Linux only (``/proc``). Not a test: figures depend on the machine; docs/security.md
quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

EMOJI = "\N{GRINNING FACE}"
MASK = b"\x00\x00\x00\x00"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_size(path: str) -> int:
    return Path(path).stat().st_size


async def start_server(port: int, extra: list[str], log_path: str) -> trio.Process:
    with Path(log_path).open("wb") as log:  # noqa: ASYNC230 (once, before the run)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_agent", "serve", "--port", str(port), *extra],
            stdout=log,
            stderr=log,
        )
    with trio.fail_after(20):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                return proc
            except OSError:
                await trio.sleep(0.05)


async def open_raw(port: int) -> tuple[trio.SocketStream, WSConnection]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
    while True:
        ws.receive_data(await stream.receive_some())
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return stream, ws


async def memory_attacker(port: int, chars: int, stop: trio.Event, closed: list[int]) -> None:
    frames = [
        json.dumps(
            {"msg_type": "INTERRUPT", "msg_id": "i", "payload": {"reason": EMOJI * chars}},
            ensure_ascii=False,
        ),
        json.dumps({"msg_id": EMOJI * chars}, ensure_ascii=False),
    ]
    while not stop.is_set():
        try:
            stream, ws = await open_raw(port)
            i = 0
            while not stop.is_set():
                await stream.send_all(ws.send(TextMessage(frames[i % 2])))
                i += 1
                await trio.sleep(1 / 20)  # under the default 50 frames/s
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            closed[0] += 1


async def measure_memory(args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    proc = await start_server(port, args.server_args, args.log)
    # One polite connection first, so the baseline includes what any session costs.
    stream, _ = await open_raw(port)
    await stream.aclose()
    await trio.sleep(0.5)
    before = rss_kib(proc.pid)
    peak = before
    stop = trio.Event()
    closed = [0]
    async with trio.open_nursery() as nursery:
        for _ in range(args.connections):
            nursery.start_soon(memory_attacker, port, args.chars, stop, closed)
        deadline = trio.current_time() + args.seconds
        while trio.current_time() < deadline:
            peak = max(peak, rss_kib(proc.pid))
            await trio.sleep(0.05)
        stop.set()
        nursery.cancel_scope.cancel()
    await trio.sleep(1)
    after = rss_kib(proc.pid)
    proc.terminate()
    await proc.wait()
    return {
        "attack": "memory",
        "connections": args.connections,
        "seconds": args.seconds,
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_growth_peak_mib": round((peak - before) / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "connections_closed_by_server": closed[0],
    }


async def frame_attacker(port: int, count: int, first: bytes, each: bytes) -> int:
    stream, _ = await open_raw(port)
    sent = 0
    try:
        await stream.send_all(first)
        chunk = each * 1000
        while sent < count:
            await stream.send_all(chunk)
            sent += 1000
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await stream.aclose()
    return sent


async def measure_frames(args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    proc = await start_server(port, args.server_args, args.log)
    canary, ws = await open_raw(port)
    cpu0 = cpu_s(proc.pid)
    t0 = time.monotonic()
    results: dict[str, object] = {"attack": "frames", "connections": args.connections}
    rtts: list[float] = []

    async def canary_pings(done: trio.Event) -> None:
        while not done.is_set():
            start = time.monotonic()
            await canary.send_all(
                ws.send(TextMessage(json.dumps({"msg_type": "HEARTBEAT", "msg_id": "h"})))
            )
            data = b""
            while b"HEARTBEAT" not in data:
                data += await canary.receive_some()
            ws.receive_data(data)
            list(ws.events())
            rtts.append(time.monotonic() - start)
            await trio.sleep(0.01)

    continuation = bytes((0x00, 0x80)) + MASK
    ping = bytes((0x89, 0x80)) + MASK
    text_without_fin = bytes((0x01, 0x82)) + MASK + b'{"'
    done = trio.Event()
    sent: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(canary_pings, done)
        # Bounded: an attack the server does not stop is cut after --seconds.
        with trio.move_on_after(args.seconds), trio.CancelScope():
            async with trio.open_nursery() as attackers:

                async def one(first: bytes, each: bytes) -> None:
                    sent.append(await frame_attacker(port, args.frames, first, each))

                for i in range(args.connections):
                    if i % 2 == 0:
                        attackers.start_soon(one, text_without_fin, continuation)
                    else:
                        attackers.start_soon(one, b"", ping)
        done.set()
    results["frames_sent_before_close"] = sent or "none closed"
    results["seconds"] = round(time.monotonic() - t0, 2)
    results["server_cpu_s"] = round(cpu_s(proc.pid) - cpu0, 2)
    rtts.sort()
    results["canary_heartbeat_max_ms"] = round(rtts[-1] * 1000, 1) if rtts else None
    await canary.aclose()
    proc.terminate()
    await proc.wait()
    return results


async def measure_logs(args: argparse.Namespace) -> dict[str, object]:
    port = free_port()
    proc = await start_server(port, ["--rate-limit-per-s", "0", *args.server_args], args.log)
    start = log_size(args.log)
    stream, ws = await open_raw(port)
    reason = "why" * 10_000
    buffered = b""
    for i in range(args.rounds):
        for frame in (
            {"msg_type": "REQUEST", "msg_id": f"q{i}", "request_id": f"r{i}",
             "payload": {"input": "x", "agent": "lorem", "options": {"words": 1000}}},
            {"msg_type": "INTERRUPT", "msg_id": f"i{i}", "request_id": f"r{i}",
             "payload": {"reason": reason}},
        ):  # fmt: skip
            await stream.send_all(ws.send(TextMessage(json.dumps(frame))))
        while f'"r{i}"'.encode() not in buffered or b'"DONE"' not in buffered:
            buffered += await stream.receive_some()
        buffered = b""
    await stream.aclose()
    await trio.sleep(0.5)
    proc.terminate()
    await proc.wait()
    return {
        "attack": "logs",
        "rounds": args.rounds,
        "reason_chars": len(reason),
        "log_bytes": log_size(args.log) - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=("memory", "frames", "logs"))
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--chars",
        type=int,
        default=262_000,
        help="4-byte characters per echo (default: a 1 MiB message)",
    )
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames per connection")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--log", default="/tmp/trio-agent-attack.log")
    args, server_args = parser.parse_known_args()
    # Extra server flags, after "--".
    args.server_args = [a for a in server_args if a != "--"]
    measure = {"memory": measure_memory, "frames": measure_frames, "logs": measure_logs}
    print(json.dumps(trio.run(measure[args.attack], args), indent=2))


if __name__ == "__main__":
    main()
