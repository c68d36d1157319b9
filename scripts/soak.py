#!/usr/bin/env python3
"""Soak: many misbehaving clients against one server process, for a bounded time.

    .venv/bin/python scripts/soak.py                 # 60 s, 32 clients, loopback
    .venv/bin/python scripts/soak.py --duration 10 --clients 8 --json out.json

It starts ``python -m trio_agent serve`` on 127.0.0.1 (a free port, a random
token, a short ``send_timeout_s`` so that stalls resolve within the run) and runs
``--clients`` client tasks until ``--duration`` has passed. Each task picks a
behaviour again and again:

* stream: a REQUEST read to its DONE;
* interrupt: a long REQUEST cut after a few frames (one request, or all, or three
  INTERRUPTs back to back, sometimes a REQUEST right after an interrupt-all); the
  INTERRUPT -> INTERRUPT_ACK time is measured at the client;
* garbage: invalid frames of every kind (each must get its ERROR), sometimes an
  oversized WebSocket message (must close with 1009);
* heartbeat: round trips;
* stall: a fast stream the client stops reading, until the server aborts it, or
  a pause shorter than ``send_timeout_s`` after which reading resumes;
* vanish: leave mid-stream (TCP reset), mid-handshake, mid-frame, mid-close;
* flood: frames faster than the rate limit until the server closes with 1008;
* trespass: a wrong token (401), a foreign Origin (403);
* and the attacks an adversarial pass found (``soak_attacks.py``,
  ``soak_http_attacks.py``), each a behaviour of its own: echoes (clients that
  never read, whose frames make the server echo 64 KB strings), log_floods
  (INTERRUPTs with long reasons cutting 8 requests), heartbeat_interrupts (a
  HEARTBEAT burst, then the INTERRUPT that must still stop the reply),
  malformed_frames, fragments and pings (empty continuation frames, pings, as
  fast as TCP goes), rebinds (a DNS-rebinding page's Host, against a second
  server started without a token), metrics_pipelines, smuggles
  (Content-Length with Transfer-Encoding), token_names (the token under other
  query names), bad_handshakes and address_hoards (one address opening 300
  sessions). The heavy ones run one at a time.

``--without NAME`` leaves a behaviour out. Besides the clients, a canary (a
well-behaved client, ``soak_canary.py``) streams and interrupts throughout, and
its times say what the mix costs a client that did nothing wrong. Before the mix,
on the idle server, a quiet phase (``soak_quiet.py``) runs the two attacks that
need the server's whole attention alone: the HEARTBEAT burst, and a pack of 8
non-reading echo clients whose RSS growth is the figure of the memory bound.

Every conversation runs through :class:`trio_agent.protocol.guarantees.GuaranteeChecker`;
an INTERRUPT refused, or a STREAM frame after one, counts as a violation too.
A watcher samples the server's RSS and open file descriptors (``/proc``, so Linux
only) and reads the server's ``server stats`` DEBUG lines (sessions, live tasks);
the log follower counts the log bytes of each session (INFO and above) and every
line that holds the token.

The report (a table, and JSON with ``--json``) gives frames, interrupts and their
ACK p50/p99 (at the client, and inside the server from its ``interrupt
acknowledged`` lines: INTERRUPT read to ACK written), bad frames tried,
disconnects by kind, what the server answered to each attack (statuses, close
codes, ERROR codes), and the end state once every client has gone: live tasks
against the idle baseline, open fds against the baseline, RSS, guarantees
violated, whether the token ever reached a log line; then each bound, its
figure, and whether it held (``soak_bounds.py``). The exit status is 0 only when
no guarantee was violated, no task and no fd leaked, no secret was logged, every
bound held and the server exited 0 on SIGTERM. Against a server without a
defence the soak runs to its end all the same, and shows the bound broken.

"Surprises" are client-side events that should not happen on a quiet machine (an
operation taking longer than 30 s, a flood that is not closed): they are listed,
and do not decide the verdict. Client and server share the machine, so on a busy
host the latencies say as much about the host as about the server.

The clients and their behaviours are in ``soak_client.py`` and
``soak_behaviours.py``, the watch on the server process in ``soak_server.py``,
the table in ``soak_report.py``; this module starts the server and runs the soak.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])  # run inside the project's venv

import trio  # noqa: E402
from interrupt_bench.stats import summarize  # noqa: E402
from soak_behaviours import BEHAVIOURS, client_loop, warm_up  # noqa: E402
from soak_bounds import attack_figures, bounds  # noqa: E402
from soak_canary import Canary  # noqa: E402
from soak_client import Server, Tally  # noqa: E402
from soak_http_attacks import PER_ADDRESS_LIMIT  # noqa: E402
from soak_quiet import quiet_phase  # noqa: E402
from soak_report import report  # noqa: E402
from soak_server import (  # noqa: E402
    Sample,
    ServerProcess,
    cpu_seconds,
    new_file,
    open_server_command,
    proc_sample,
    server_command,
    wait_idle,
    watch,
)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, warm it up, take the baseline, run the clients until
    ``args.duration`` has passed, wait for the server to be idle again, and return
    every figure of the report. The server gets SIGTERM at the end, whatever happened."""
    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "TRIO_AGENT_TOKEN": token,
        "TRIO_AGENT_MAX_SESSIONS_PER_ADDRESS": str(PER_ADDRESS_LIMIT),
    }
    command = server_command()
    log_dir = tempfile.TemporaryDirectory(prefix="trio-agent-soak-")
    log_path = args.server_log or Path(log_dir.name) / "server.log"
    with new_file(log_path) as log_sink:
        proc = await trio.lowlevel.open_process(command, stderr=log_sink, env=env, cwd=ROOT)
    log = await trio.open_file(log_path, "rb")
    server = ServerProcess(proc, token)
    open_env = {k: v for k, v in os.environ.items() if k != "TRIO_AGENT_TOKEN"}
    open_log_path = Path(log_dir.name) / "open-server.log"
    with new_file(open_log_path) as log_sink:
        open_proc = await trio.lowlevel.open_process(
            open_server_command(), stderr=log_sink, env=open_env, cwd=ROOT
        )
    open_log = await trio.open_file(open_log_path, "rb")
    open_server = ServerProcess(open_proc, "")
    tally = Tally()
    canary = Canary()
    samples: list[Sample] = []
    result: dict[str, Any] = {"command": " ".join(sys.argv), "server_command": " ".join(command)}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.follow_log, log)
            nursery.start_soon(open_server.follow_log, open_log)
            with trio.fail_after(30):
                await server.listening.wait()
                await open_server.listening.wait()
            assert server.url is not None
            assert open_server.url is not None
            target = Server(port_of(server.url), token, port_of(open_server.url))

            await warm_up(target)
            await wait_idle(server, None, 15)
            idle_rss, baseline_fds = proc_sample(proc.pid)
            baseline_tasks = server.stats["tasks"]

            # The quiet phase first, on the fresh server: its RSS growth is not
            # hidden by memory the mix freed (and the allocator kept).
            print("soak: the quiet phase", file=sys.stderr)
            quiet = await quiet_phase(target, tally, proc.pid, set(args.without))
            quiet["back_to_idle"] = await wait_idle(server, baseline_tasks, 20)
            baseline_rss, quiet["fds_after"] = proc_sample(proc.pid)
            quiet["tasks_after"] = server.stats.get("tasks")

            t0 = trio.current_time()
            cpu0 = (cpu_seconds(proc.pid), time.process_time(), os.getloadavg()[0])
            nursery.start_soon(watch, server, samples, t0, args.sample_interval)
            deadline = t0 + args.duration
            print(
                f"soak: {args.clients} clients for {args.duration:g} s against {server.url}",
                file=sys.stderr,
            )
            async with trio.open_nursery() as clients:
                clients.start_soon(canary.run, target, deadline)
                for i in range(args.clients):
                    clients.start_soon(
                        client_loop, target, tally, args.seed + i, deadline, set(args.without)
                    )
            clients_done = trio.current_time() - t0
            cpu1 = (cpu_seconds(proc.pid), time.process_time(), os.getloadavg()[0])

            idle = await wait_idle(server, baseline_tasks, 20)
            end_rss, end_fds = proc_sample(proc.pid)
            end_stats = dict(server.stats)

            nursery.cancel_scope.cancel()
    finally:
        for process in (open_proc, proc):
            await stop(process)
        while await server.read_more(log):  # the shutdown lines, to the last one
            pass
        await log.aclose()
        await open_log.aclose()
        log_dir.cleanup()

    counts = tally.counts
    ack_ms = summarize(tally.ack_ms)
    server_ack_ms = summarize(server.ack_us, scale=1e-3)
    result.update(
        duration_s=args.duration,
        clients=args.clients,
        clients_finished_after_s=round(clients_done, 1),
        server_cpu_percent=round(100 * (cpu1[0] - cpu0[0]) / clients_done),
        soak_cpu_percent=round(100 * (cpu1[1] - cpu0[1]) / clients_done),
        load_average=(round(cpu0[2], 1), round(cpu1[2], 1)),
        cpu_cores=os.cpu_count(),
        frames_sent=counts["frames sent"],
        frames_received=counts["frames received"],
        requests=counts["requests"],
        interrupts=counts["interrupts"],
        ack_ms_p50=ack_ms["p50"],
        ack_ms_p99=ack_ms["p99"],
        ack_ms_max=ack_ms["max"],
        heartbeat_ms_p99=summarize(tally.heartbeat_ms)["p99"],
        server_ack_ms_p50=server_ack_ms["p50"],
        server_ack_ms_p99=server_ack_ms["p99"],
        bad_frames_tried=counts["bad frames tried"],
        flood_frames=counts["flood frames"],
        disconnects={
            k: v
            for k, v in sorted(counts.items())
            if k.startswith(("vanished", "stalls", "floods", "closed"))
        },
        refusals={k: v for k, v in sorted(counts.items()) if k.startswith("refused")},
        done_statuses={k: v for k, v in sorted(counts.items()) if k.startswith("DONE")},
        behaviours={k[4:]: v for k, v in sorted(counts.items()) if k.startswith("ran ")},
        sessions_opened=counts["sessions"],
        surprises=counts["surprises"],
        surprise_samples=tally.surprises,
        guarantees_violated=len(tally.violations),
        violation_samples=tally.violations[:20],
        baseline={
            "tasks": baseline_tasks,
            "fds": baseline_fds,
            "rss_mb": round(baseline_rss / 2**20, 1),
            "idle_rss_mb": round(idle_rss / 2**20, 1),
        },
        peak={
            "tasks": max((s.tasks for s in samples), default=None),
            "sessions": max((s.sessions for s in samples), default=None),
            "fds": max((s.fds for s in samples), default=None),
            "rss_mb": round(max((s.rss for s in samples), default=0) / 2**20, 1),
        },
        end={
            "tasks": end_stats.get("tasks"),
            "sessions": end_stats.get("sessions"),
            "fds": end_fds,
            "rss_mb": round(end_rss / 2**20, 1),
        },
        rss_mb_over_time={
            f"{sample.t:.0f}s": round(sample.rss / 2**20, 1)
            for sample in samples[:: max(1, len(samples) // 6)]
        },
        back_to_idle=idle,
        leaked_tasks=(end_stats.get("tasks") or 0) - baseline_tasks,
        leaked_fds=end_fds - baseline_fds,
        rss_growth_mb=round((end_rss - baseline_rss) / 2**20, 1),
        server_log_lines=server.log_lines,
        server_warnings=dict(server.warnings.most_common()),
        server_warning_samples=server.warning_samples,
        secrets_in_logs=server.secret_leaks,
        server_exit_code=proc.returncode,
    )
    result["quiet_phase"] = quiet
    result["guarantees_violated"] += len(canary.tally.violations)
    result["violation_samples"] += canary.tally.violations[:5]
    result.update(attack_figures(tally, server, canary))
    result["bounds"] = bounds(result)
    result["ok"] = (
        result["guarantees_violated"] == 0
        and result["leaked_tasks"] == 0
        and result["leaked_fds"] == 0
        and result["secrets_in_logs"] == 0
        and idle
        and quiet["back_to_idle"]
        and quiet["fds_after"] == baseline_fds
        and quiet["tasks_after"] == baseline_tasks
        and proc.returncode == 0
        and all(bound["held"] for bound in result["bounds"].values())
    )
    return result


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def stop(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of soak (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the first client")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="watcher period (s)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=[b.__name__ for b, _ in BEHAVIOURS],
        help="leave a behaviour out (repeatable)",
    )
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        parser.error("the watcher reads /proc: Linux only")
    result = trio.run(soak, args)
    print(report(result))
    for sample in (
        result["violation_samples"]
        + result["surprise_samples"]
        + [f"canary: {miss}" for miss in result["canary"]["miss_samples"]]
        + result["server_warning_samples"]
    ):
        print("  ", sample)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
