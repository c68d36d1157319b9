"""Flood ``GET /metrics`` from many pipelining connections; report the server's CPU
and the latency of a ``/healthz`` canary (docs/security.md, "Plain HTTP").

    .venv/bin/python scripts/metrics_flood.py [SOURCE_TREE] [CONNECTIONS] [SECONDS]

Starts ``python -m trio_agent serve`` from SOURCE_TREE (default: this checkout) on a
free port, runs CONNECTIONS threads (default 100) that each send 50 pipelined
``GET /metrics`` per write and reconnect when the server closes, for SECONDS
(default 10), and a canary that fetches ``/healthz`` every 200 ms.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINED = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 50
CANARY = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(source: str) -> tuple[subprocess.Popen[bytes], int]:
    """``trio-agent serve`` from the checkout at ``source`` on a free loopback port,
    once it accepts connections (waiting at most 10 s)."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_agent",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ],
        env=dict(os.environ, PYTHONPATH=source),
        cwd=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, port


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else str(ROOT)
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    server, port = start_server(source)

    def cpu_s() -> float:
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    stop = time.monotonic() + seconds
    counts = {"responses": 0, "closed": 0}
    latencies: list[float] = []

    def flood() -> None:
        while time.monotonic() < stop:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    while time.monotonic() < stop:
                        s.sendall(PIPELINED)
                        got = s.recv(1 << 20)
                        if not got:
                            break
                        counts["responses"] += got.count(b"HTTP/1.1 ")
            except OSError:
                pass
            counts["closed"] += 1

    def canary() -> None:
        while time.monotonic() < stop:
            start = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(CANARY)
                    while s.recv(4096):
                        pass
                latencies.append(time.monotonic() - start)
            except OSError:
                latencies.append(float("inf"))
            time.sleep(0.2)

    cpu_before, started = cpu_s(), time.monotonic()
    threads = [threading.Thread(target=flood) for _ in range(connections)]
    threads.append(threading.Thread(target=canary))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = (cpu_s() - cpu_before) / (time.monotonic() - started)
    server.terminate()
    server.wait()
    latencies.sort()
    print(
        f"{connections} connections for {seconds:.0f} s: server CPU {cpu * 100:.0f}% of a core, "
        f"{counts['responses']} responses, {counts['closed']} connections ended; canary /healthz "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms "
        f"({len(latencies)} fetches)"
    )


if __name__ == "__main__":
    main()
