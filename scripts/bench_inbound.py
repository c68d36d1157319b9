"""What an inbound message costs the server: CPU per HEARTBEAT and its round trip.

Every message a client sends (INTERRUPT, REQUEST, HEARTBEAT) is read, handled and
answered; a HEARTBEAT is the smallest of them, answered through the priority lane,
so its cost is the read path's and the writer's and little else. This starts one
trio-agent server per source tree (``--tree LABEL=PATH``; by default this checkout
only), each its own process, and against each in turn, round after round:

- **round trips**: one quiet session sends a HEARTBEAT and waits for the reply, a
  number of times: RTT percentiles, and the server's CPU per round trip;
- **window**: one session keeps ``--window`` HEARTBEATs in flight, each in its own
  write, until ``--messages`` are answered: the server's CPU per message.

CPU is the server process's user + system seconds (psutil, read from outside),
which depends far less on the machine's load than a latency does. The client is
a plain blocking socket (hand-made RFC 6455 frames), the same for every tree. The
first tree is the reference of the ratios. ``docs/performance.md`` ("Tuning the
hot path", item 5) has a run.

    .venv/bin/python scripts/bench_inbound.py --tree before=/tmp/before --tree after=.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Tree:
    label: str
    path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    rtt_cpu_s: float = 0.0
    rtt_count: int = 0
    window_cpu_s: float = 0.0
    window_count: int = 0

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(tree: Tree) -> None:
    tree.port = free_port()
    # -P: the tree's own code, not this checkout's, whatever the working directory.
    env = {**os.environ, "PYTHONPATH": str(tree.path), "PYTHONUNBUFFERED": "1"}
    tree.process = subprocess.Popen(
        [
            *(sys.executable, "-P", "-m", "trio_agent", "serve", "--port", str(tree.port)),
            *("--max-sessions-per-address", "0", "--log-level", "WARNING"),
            # HEARTBEATs as fast as the server answers: no rate limit in the way.
            *("--rate-limit-per-s", "0", "--ws-frame-rate-per-s", "0"),
        ],
        cwd=tree.path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", tree.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{tree.label}: the server did not listen within 60 s")


class Client:
    """A blocking WebSocket client: just enough of RFC 6455 for text frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: trio-agent.v1\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.receive()  # SESSION
        self.sent = 0

    def heartbeat_frame(self) -> bytes:
        self.sent += 1
        payload = json.dumps({"msg_type": "HEARTBEAT", "msg_id": f"h{self.sent}"}).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked

    def receive(self) -> bytes:
        while True:
            if len(self.buffer) >= 2:
                length = self.buffer[1] & 0x7F
                start = 2
                if length == 126:
                    (length,) = struct.unpack("!H", self.buffer[2:4])
                    start = 4
                elif length == 127:
                    (length,) = struct.unpack("!Q", self.buffer[2:10])
                    start = 10
                if len(self.buffer) >= start + length:
                    frame = self.buffer[start : start + length]
                    self.buffer = self.buffer[start + length :]
                    return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def round_trips(tree: Tree, count: int) -> None:
    client = Client(tree.port)
    before = tree.cpu_seconds()
    for _ in range(count):
        frame = client.heartbeat_frame()
        sent_at = time.perf_counter()
        client.sock.sendall(frame)
        client.receive()
        tree.rtts_ms.append((time.perf_counter() - sent_at) * 1000)
    tree.rtt_cpu_s += tree.cpu_seconds() - before
    tree.rtt_count += count
    client.close()


def window(tree: Tree, messages: int, in_flight: int) -> None:
    client = Client(tree.port)
    before = tree.cpu_seconds()
    answered = 0
    for _ in range(min(in_flight, messages)):
        client.sock.sendall(client.heartbeat_frame())
    while answered < messages:
        client.receive()
        answered += 1
        if client.sent < messages:
            client.sock.sendall(client.heartbeat_frame())
    tree.window_cpu_s += tree.cpu_seconds() - before
    tree.window_count += messages
    client.close()


def ratio(reference: float, value: float) -> float | None:
    """``reference / value``; ``None`` when either is 0 (a run too short for the
    CPU clock, which counts in 10 ms ticks)."""
    return reference / value if reference > 0 and value > 0 else None


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a source tree to serve (repeatable; default: this checkout)",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-trips", type=int, default=500, help="per round and tree")
    parser.add_argument("--messages", type=int, default=5000, help="per round and tree")
    parser.add_argument("--window", type=int, default=16, help="HEARTBEATs in flight")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    trees = [
        Tree(label, Path(path).resolve())
        for label, _, path in (spec.partition("=") for spec in args.tree or [f"this={REPO}"])
    ]
    load_start = os.getloadavg()
    try:
        for tree in trees:
            start(tree)
        for _ in range(args.rounds):
            for tree in trees:
                round_trips(tree, args.round_trips)
                window(tree, args.messages, args.window)
    finally:
        for tree in trees:
            if tree.process is not None:
                tree.process.terminate()
                tree.process.wait(10)
    load_end = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for tree in trees:
        rtts = sorted(tree.rtts_ms)
        rows.append(
            {
                "tree": tree.label,
                "path": str(tree.path),
                "rtt_p50_ms": statistics.median(rtts),
                "rtt_p90_ms": rtts[int(0.9 * (len(rtts) - 1))],
                "cpu_us_per_round_trip": tree.rtt_cpu_s / tree.rtt_count * 1e6,
                "cpu_us_per_message_in_window": tree.window_cpu_s / tree.window_count * 1e6,
            }
        )
    reference = rows[0]
    print(f"load average {load_start} at the start, {load_end} at the end")
    print(
        "| tree | RTT p50 ms | RTT p90 ms | CPU us / round trip | CPU us / message, window"
        f" {args.window} | CPU ratio {reference['tree']} / tree (round trip, window) |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratio_rt = ratio(reference["cpu_us_per_round_trip"], row["cpu_us_per_round_trip"])
        ratio_w = ratio(
            reference["cpu_us_per_message_in_window"], row["cpu_us_per_message_in_window"]
        )
        row["cpu_ratio_round_trip"], row["cpu_ratio_window"] = ratio_rt, ratio_w
        print(
            f"| {row['tree']} | {row['rtt_p50_ms']:.3f} | {row['rtt_p90_ms']:.3f} |"
            f" {row['cpu_us_per_round_trip']:.1f} | {row['cpu_us_per_message_in_window']:.1f} |"
            f" {shown(ratio_rt)}, {shown(ratio_w)} |"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "load_start": load_start,
                    "load_end": load_end,
                    "args": vars(args) | {"json": str(args.json)},
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
