"""A cluster on loopback: redis-server, N trio-agent nodes and HAProxy in front, as processes.

For tests, benchmarks and the ``scripts/cluster`` demo::

    with LocalCluster(nodes=3) as cluster:
        print(cluster.url)          # ws://127.0.0.1:<port>/ws, through HAProxy
        cluster.kill(1)             # SIGKILL node 1: a crash, as its clients see it
        cluster.terminate(2)        # SIGTERM node 2: it drains (1012), then exits

Synchronous on purpose, like :mod:`trio_agent.testing.processes`: a module-scoped
pytest fixture starts it once, before any Trio run. Every process is started on a
free loopback port, writes its output to a log file in a temporary directory (never
a pipe nobody reads; :meth:`LocalCluster.logs` gives their tails for a failure's
message), and is stopped by its PID in a ``finally`` (SIGTERM, then SIGKILL after a
bounded wait), so a failing test leaves no process behind.

HAProxy runs ``deploy/haproxy.cfg`` rendered with the cluster's ports
(:func:`render_haproxy_config`): ``leastconn``, a health check on ``/readyz``
every 250 ms, so a draining node leaves the rotation within about half a second.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

from trio_agent.testing.processes import RedisServer, free_port, redis_executable, redis_server

__all__ = [
    "HAPROXY_TEMPLATE",
    "ClusterError",
    "LocalCluster",
    "NodeProcess",
    "cluster_unavailable",
    "haproxy_executable",
    "http_get",
    "render_haproxy_config",
    "wait_until",
]

#: The committed HAProxy configuration the cluster renders (in a source checkout).
HAPROXY_TEMPLATE: Final = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
#: How long the nodes and HAProxy have to come up (a loaded machine imports slowly).
STARTUP_TIMEOUT_S: Final = 60.0
#: How long :meth:`LocalCluster.stop` waits for a process after SIGTERM before SIGKILL.
STOP_GRACE_S: Final = 5.0

_SERVER_LINE = re.compile(r"^(\s*)server\s+\S+\s+\S+(.*)$")
_ENV_DEFAULT = re.compile(r'"\$\{(\w+)-([^}]*)\}"')


class ClusterError(RuntimeError):
    """The cluster could not be started (the message holds the processes' output)."""


def haproxy_executable() -> str | None:
    """The path of ``haproxy`` on ``PATH``, or ``None``."""
    return shutil.which("haproxy")


def cluster_unavailable() -> str | None:
    """Why a :class:`LocalCluster` cannot run here, or ``None`` when it can."""
    missing = [
        name
        for name, path in (
            ("redis-server (or valkey-server)", redis_executable()),
            ("haproxy", haproxy_executable()),
        )
        if path is None
    ]
    if missing:
        return f"{' and '.join(missing)} not on PATH (Debian: apt-get install redis-server haproxy)"
    if not HAPROXY_TEMPLATE.is_file():
        return f"{HAPROXY_TEMPLATE} is missing (a source checkout is needed)"
    return None


def render_haproxy_config(
    template: str, *, bind: str, nodes: Sequence[str], stats_socket: str | None = None
) -> str:
    """``deploy/haproxy.cfg`` with real addresses: the frontend's ``"${...-default}"``
    replaced by ``bind``, and the ``server`` lines replaced by one per address of
    ``nodes`` (``host:port``), named ``node1``, ``node2``, ... with the options of the
    template's first ``server`` line. ``stats_socket``: a Unix socket path for
    ``show stat`` (how :class:`LocalCluster` knows every node is in the rotation).
    """
    lines: list[str] = []
    servers_written = False
    for line in template.splitlines():
        server = _SERVER_LINE.match(line)
        if server is not None:
            if not servers_written:
                indent, options = server.groups()
                for i, address in enumerate(nodes, start=1):
                    lines.append(f"{indent}server node{i} {address}{options}")
                servers_written = True
            continue
        lines.append(_ENV_DEFAULT.sub(lambda _: bind, line) if "bind" in line else line)
        if stats_socket is not None and line.strip() == "global":
            lines.append(f"    stats socket {stats_socket} mode 600 level user")
    if not servers_written:
        raise ValueError("the template has no 'server' line")
    return "\n".join(lines) + "\n"


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, dict[str, str]]:
    """GET ``url`` on a new connection; its status and headers (lower-case names).
    A refused or broken connection raises :class:`OSError`."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


def wait_until(
    ready: Callable[[], bool], timeout_s: float, what: str, details: Callable[[], str]
) -> None:
    """Poll ``ready()`` until it is true; raise :class:`ClusterError` naming ``what``
    (with ``details()``) after ``timeout_s``. Polling a process we do not control,
    not synchronising our own tasks."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() >= deadline:
            raise ClusterError(f"{what} within {timeout_s:g} s\n{details()}")
        time.sleep(0.05)


def _answers(url: str, status: int = 200) -> bool:
    try:
        return http_get(url, timeout_s=1.0)[0] == status
    except OSError:
        return False


@dataclass
class NodeProcess:
    """One node of a :class:`LocalCluster`."""

    index: int
    node_id: str
    port: int
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The node's process id (0 once it has exited)."""
        process = self.process
        return process.pid if process is not None and process.poll() is None else 0

    @property
    def running(self) -> bool:
        return self.pid != 0

    @property
    def url(self) -> str:
        """The node's own WebSocket URL (not through HAProxy)."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def wait(self, timeout_s: float) -> int:
        """Wait for the node to exit (raises ``subprocess.TimeoutExpired``); its exit code."""
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)


class LocalCluster:
    """redis-server, ``nodes`` trio-agent nodes and HAProxy, on loopback.

    :param nodes: how many nodes (``node-0``, ``node-1``, ...).
    :param extra_args: more flags for every node's ``serve`` (e.g. ``["--drain-s", "5"]``).
    :param python: the interpreter that runs the nodes (this one by default).

    ``start()`` (or ``with``) returns once every node's ``/readyz`` answers 200 and
    HAProxy has every node in its rotation; ``stop()`` stops them all.
    """

    def __init__(
        self, nodes: int = 3, *, extra_args: Sequence[str] = (), python: str = sys.executable
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self._count = nodes
        self._extra_args = list(extra_args)
        self._python = python
        self._stack = contextlib.ExitStack()
        self._workdir: Path | None = None
        self.redis: RedisServer | None = None
        self.nodes: list[NodeProcess] = []
        self._haproxy: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._restarts = 0

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The WebSocket URL through HAProxy: what clients use."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def haproxy_pid(self) -> int:
        process = self._haproxy
        return process.pid if process is not None and process.poll() is None else 0

    @property
    def workdir(self) -> Path:
        assert self._workdir is not None, "the cluster is not started"
        return self._workdir

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start Redis, the nodes and HAProxy; return once all are ready (or raise
        :class:`ClusterError` with their output, having stopped them)."""
        why = cluster_unavailable()
        if why is not None:
            raise ClusterError(f"cannot start a local cluster: {why}")
        try:
            self._workdir = Path(
                self._stack.enter_context(tempfile.TemporaryDirectory(prefix="trio-agent-cluster-"))
            )
            self.redis = self._stack.enter_context(redis_server())
            for i in range(self._count):
                self.nodes.append(self._node(i))
            for node in self.nodes:
                node.start()
            self._start_haproxy()
            for node in self.nodes:
                self._wait_node_ready(node)
            self._wait_in_rotation()
        except BaseException:
            self.stop()
            raise
        return self

    def _node(self, index: int, node_id: str | None = None, port: int | None = None) -> NodeProcess:
        assert self.redis is not None
        node_id = node_id or f"node-{index}"
        port = port or free_port()
        command = [
            self._python,
            "-m",
            "trio_agent",
            "serve",
            "--port",
            str(port),
            "--redis-url",
            self.redis.url,
            "--node-id",
            node_id,
            # HAProxy says who the client is (option forwardfor): the per-address
            # limits count clients, not the proxy.
            "--trust-forwarded-for",
            "127.0.0.1",
            *self._extra_args,
        ]
        return NodeProcess(index, node_id, port, command, self.workdir / f"{node_id}.log")

    def _start_haproxy(self) -> None:
        executable = haproxy_executable()
        assert executable is not None
        self.port = free_port()
        config = render_haproxy_config(
            HAPROXY_TEMPLATE.read_text(),
            bind=f"127.0.0.1:{self.port}",
            nodes=[f"127.0.0.1:{node.port}" for node in self.nodes],
            stats_socket=str(self.workdir / "haproxy.sock"),
        )
        config_path = self.workdir / "haproxy.cfg"
        config_path.write_text(config)
        with (self.workdir / "haproxy.log").open("ab") as log:
            # -db: stay in the foreground, so that the PID we hold is HAProxy's.
            self._haproxy = subprocess.Popen(
                [executable, "-db", "-f", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_node_ready(self, node: NodeProcess) -> None:
        def ready() -> bool:
            if not node.running:
                raise ClusterError(f"{node.node_id} exited ({node.returncode})\n{self.logs()}")
            return _answers(node.http_url + "readyz")

        wait_until(ready, STARTUP_TIMEOUT_S, f"{node.node_id} was not ready", self.logs)

    def _wait_in_rotation(self) -> None:
        def ready() -> bool:
            if not self.haproxy_pid:
                raise ClusterError(f"haproxy exited\n{self.logs()}")
            return self.nodes_up() == {node.index for node in self.nodes if node.running}

        wait_until(ready, STARTUP_TIMEOUT_S, "HAProxy did not take every node", self.logs)

    def nodes_up(self) -> set[int]:
        """The indexes of the nodes HAProxy has in its rotation now (its ``show stat``)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
                stats.settimeout(1.0)
                stats.connect(str(self.workdir / "haproxy.sock"))
                stats.sendall(b"show stat\n")
                data = b""
                while chunk := stats.recv(65536):
                    data += chunk
        except OSError:
            return set()
        up = set()
        for row in data.decode(errors="replace").splitlines():
            fields = row.split(",")
            if len(fields) > 17 and fields[1].startswith("node") and fields[17] == "UP":
                up.add(int(fields[1][4:]) - 1)
        return up

    def stop(self) -> None:
        """Stop HAProxy and every node (SIGTERM, then SIGKILL after a bounded wait), then
        Redis. Idempotent; never raises for a process that is already gone."""
        try:
            processes = [node.process for node in self.nodes if node.process is not None]
            if self._haproxy is not None:
                processes.append(self._haproxy)
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for process in processes:
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            self._stack.close()

    # ------------------------------------------------------------------ trouble

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: it vanishes mid-reply, as in a crash."""
        node = self.nodes[index]
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def terminate(self, index: int) -> None:
        """SIGTERM node ``index``: in cluster mode it drains (docs/cluster.md, "Drain");
        :meth:`NodeProcess.wait` for its exit."""
        node = self.nodes[index]
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)

    def restart(self, index: int) -> NodeProcess:
        """Start node ``index`` anew (killing it first if it runs) on the same port, so
        HAProxy's ``server`` line finds it again, under a *new* node id (``node-<i>-r<n>``):
        the old id's requests are those of a dead node, which only its lease expiring
        lets another node claim. Returns once the node is ready and back in HAProxy's
        rotation."""
        self.kill(index)
        old = self.nodes[index]
        self._restarts += 1
        node = self._node(index, f"node-{index}-r{self._restarts}", old.port)
        self.nodes[index] = node
        node.start()
        self._wait_node_ready(node)
        self._wait_in_rotation()
        return node

    def restart_redis(self) -> None:
        """Stop Redis and start it again on the same port (empty: nothing is kept on disk)."""
        assert self.redis is not None
        self.redis.restart()

    # ------------------------------------------------------------------ diagnosis

    def logs(self, lines: int = 30) -> str:
        """The tail of every process's output, for an assertion's message."""
        if self._workdir is None:
            return "(not started)"
        parts = []
        for path in sorted(self._workdir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        if self.redis is not None:
            parts.append("--- redis\n" + self.redis.log_tail(lines))
        return "\n".join(parts)

    def describe(self) -> str:
        """What runs where, one line each (what ``scripts/cluster`` prints)."""
        lines = [f"through HAProxy: {self.url}  (pid {self.haproxy_pid})"]
        for node in self.nodes:
            lines.append(f"{node.node_id}: {node.url}  (pid {node.pid or 'exited'})")
        if self.redis is not None:
            lines.append(f"redis: {self.redis.url}  (pid {self.redis.pid})")
        return "\n".join(lines)
