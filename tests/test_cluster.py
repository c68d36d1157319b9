"""A cluster of real processes on loopback: redis-server, three nodes, HAProxy in front.

The tests marked ``cluster`` are skipped (and ``scripts/test`` says so loudly) when
redis-server or haproxy is missing. Every process is started on a free port and
stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from trio_websocket import CloseReason, ConnectionClosed

from trio_agent.protocol import CloseCode
from trio_agent.server.drain import DRAIN_CLOSE_REASON
from trio_agent.testing import check_agent
from trio_agent.testing.cluster import (
    HAPROXY_TEMPLATE,
    LocalCluster,
    http_get,
    render_haproxy_config,
    wait_until,
)
from trio_agent.testing.wire import WireConnection, open_wire_url

#: What the process's exit (after the server has returned) may add on a loaded machine.
EXIT_SLACK_S = 1.5

#: A short reply, paced, so the interrupt scenarios have frames to overtake.
LOREM = {"words": 20, "words_per_s": 40}


def logged_at(log: Path, message: str) -> float:
    """When a node's text log first says ``message`` (seconds since midnight)."""
    for line in log.read_text().splitlines():
        stamp, _, rest = line.partition(" ")
        if f"- {message}" in rest:
            hours, minutes, seconds = stamp.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    raise AssertionError(f"{log.name} never said {message!r}:\n{log.read_text()}")


async def close_reason(wire: WireConnection) -> CloseReason | None:
    """Receive (and record) until the connection closes; the close frame it got."""
    try:
        while True:
            await wire.receive()
    except ConnectionClosed as closed:
        return closed.reason


def test_the_committed_haproxy_config_renders_one_server_line_per_node():
    rendered = render_haproxy_config(
        HAPROXY_TEMPLATE.read_text(),
        bind="127.0.0.1:1000",
        nodes=["127.0.0.1:1001", "127.0.0.1:1002"],
        stats_socket="/tmp/x.sock",
    )
    servers = [line.split() for line in rendered.splitlines() if line.strip().startswith("server")]
    assert servers == [
        ["server", "node1", "127.0.0.1:1001", "check"],
        ["server", "node2", "127.0.0.1:1002", "check"],
    ]
    assert "    bind 127.0.0.1:1000" in rendered.splitlines()
    assert "balance leastconn" in rendered
    assert "http-check expect status 200" in rendered


@pytest.mark.cluster
async def test_check_agent_passes_against_three_nodes_behind_haproxy(agent_cluster):
    report = await check_agent("lorem", url=agent_cluster.url, options=LOREM, patience_s=20)
    assert set(report.scenarios) == {
        "complete",
        "interrupt early",
        "interrupt late",
        "interrupt all",
        "concurrent interrupts",
        "timeout",
    }
    assert report.scenarios["complete"].startswith("completed, 20 frames")


@pytest.mark.cluster
def test_haproxy_spreads_connections_over_every_node(agent_cluster):
    answered = {
        http_get(agent_cluster.http_url + "healthz")[1].get("x-trio-agent-node") for _ in range(12)
    }
    assert answered == {node.node_id for node in agent_cluster.nodes}


@pytest.mark.cluster
async def test_sigterm_drains_a_node_out_of_haproxy_and_it_exits_within_drain_s_plus_2_s():
    """SIGTERM a node in cluster mode: HAProxy takes it out of the rotation within about a
    second, its running reply goes on until drain_s, then DONE{shutdown} and 1012, and the
    process exits 0 within drain_s + 2 s."""
    drain_s = 3.0
    with LocalCluster(nodes=2, extra_args=["--drain-s", str(drain_s)]) as cluster:
        node = cluster.nodes[0]
        async with open_wire_url(node.url) as wire:
            await wire.request(
                "r1", "", agent="lorem", options={"words": 10_000, "words_per_s": 20}
            )
            await wire.receive_until(lambda f: f["msg_type"] == "STREAM")
            sigterm_at = time.monotonic()
            cluster.terminate(0)
            out_of_rotation = await trio.to_thread.run_sync(
                lambda: (
                    wait_until(
                        lambda: 0 not in cluster.nodes_up(), 5, "node-0 stayed in", cluster.logs
                    )
                    or time.monotonic()
                )
            )
            assert out_of_rotation - sigterm_at < 1.5
            reason = await close_reason(wire)
            assert reason is not None
            assert (reason.code, reason.reason) == (CloseCode.SERVICE_RESTART, DRAIN_CLOSE_REASON)
            done = wire.transcript[-1].frame
            assert (done["msg_type"], done["payload"]["status"]) == ("DONE", "shutdown")
            assert time.monotonic() - sigterm_at >= drain_s - 0.5  # it ran on until drain_s
        code = await trio.to_thread.run_sync(lambda: node.wait(drain_s + 5))
        elapsed = time.monotonic() - sigterm_at
        assert code == 0, cluster.logs()
        # The server's own account, to the millisecond: from "draining" to "server stopped".
        drained_in = logged_at(node.log_path, "server stopped") - logged_at(
            node.log_path, "draining"
        )
        assert drain_s <= drained_in <= drain_s + 2, cluster.logs()
        # The process as a whole, with some slack for the interpreter's exit on a busy machine.
        assert elapsed <= drain_s + 2 + EXIT_SLACK_S, f"exited {elapsed:.2f} s after SIGTERM"
        assert cluster.nodes_up() == {1}


@pytest.mark.cluster
def test_cluster_up_prints_every_url_and_pid_and_ctrl_c_stops_them_all(tmp_path):
    """`trio-agent cluster up` (what scripts/cluster runs): the URL through HAProxy and
    each node's URL and PID; SIGINT stops every process it started."""
    out = tmp_path / "out.txt"
    command = [sys.executable, "-m", "trio_agent", "cluster", "up", "--nodes", "2"]
    with out.open("wb") as sink:
        demo = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        wait_until(
            lambda: "Ctrl-C stops them all" in out.read_text() or demo.poll() is not None,
            90,
            "the cluster did not come up",
            out.read_text,
        )
        text = out.read_text()
        assert "through HAProxy: ws://127.0.0.1:" in text, text
        pids += [int(pid) for pid in re.findall(r"\(pid (\d+)\)", text)]
        assert len(pids) == 4, text  # HAProxy, two nodes, Redis
        assert re.search(r"node-1: ws://127\.0\.0\.1:\d+/ws", text), text
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0, out.read_text()
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in pids:  # only when the test failed: no process is left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
