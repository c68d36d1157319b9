"""``trio-agent cluster up``: a cluster on loopback for a demo (``scripts/cluster``).

Starts redis-server, N nodes and HAProxy in front
(:class:`~trio_agent.testing.cluster.LocalCluster`), prints where each one is, and
waits for Ctrl-C (or SIGTERM); then stops them all. It says when a node exits
meanwhile: kill one (``kill -9 <pid>``) or drain it (``kill <pid>``) and watch
HAProxy send its clients to the others. docs/cluster.md, "Running a cluster".
"""

from __future__ import annotations

import argparse
import signal
import sys

from trio_agent.testing.cluster import ClusterError, LocalCluster

__all__ = ["add_cluster_arguments", "cluster_main"]

#: How often the demo looks at its processes while it waits for Ctrl-C.
_LOOK_EVERY_S = 1.0


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up"], help="up: start a cluster, Ctrl-C stops it")
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (default: 3)")


def cluster_main(args: argparse.Namespace, node_flags: list[str]) -> int:
    """Run the demo cluster until SIGINT or SIGTERM; ``node_flags`` go to every node's
    ``serve`` (e.g. ``--drain-s 5``). Returns the exit code."""
    print(f"starting redis-server, {args.nodes} nodes and HAProxy ...", flush=True)
    cluster = LocalCluster(nodes=args.nodes, extra_args=node_flags)
    try:
        cluster.start()
    except ClusterError as exc:
        print(f"trio-agent cluster: {exc}", file=sys.stderr)
        return 1
    try:
        print(cluster.describe())
        print(f"demo page: {cluster.http_url}   logs: {cluster.workdir}")
        print("Ctrl-C stops them all.", flush=True)
        # Blocked only now: the processes started above must not inherit the mask.
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        gone: set[int] = set()
        while signal.sigtimedwait(stop, _LOOK_EVERY_S) is None:
            for node in cluster.nodes:
                if node.index not in gone and not node.running:
                    gone.add(node.index)
                    print(f"{node.node_id} exited ({node.returncode})", flush=True)
        print("stopping ...", flush=True)
    finally:
        cluster.stop()
    return 0
