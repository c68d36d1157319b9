"""What a dashboard needs to know about a running server, in Prometheus terms.

Levels are read when ``/metrics`` is scraped; events are counted where they happen,
by synchronous hooks that are never a checkpoint. ``docs/web.md`` lists the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from trio_agent.observability.facts import RequestFacts
from trio_agent.protocol.constants import FrameKind
from trio_agent.protocol.messages import ErrorCode

NAMESPACE = "trio_agent"

#: Buckets of the interrupt handling time (INTERRUPT read to INTERRUPT_ACK written),
#: in seconds: the design aims at well under a millisecond, and anything past a few
#: tens of milliseconds means the ACK is queueing somewhere it should not.
INTERRUPT_ACK_BUCKETS = (
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class SessionMetrics(Protocol):
    """The hooks a session calls. Synchronous, no I/O, never raises."""

    def frames_written(self, kind: FrameKind, count: int, size: int) -> None:
        """``count`` frames of ``kind``, ``size`` bytes in all, reached the socket
        (told once per kind and write batch: a counter's ``inc`` takes a lock)."""

    def request_ended(self, record: RequestFacts) -> None:
        """A request's DONE reached the socket (``record.status`` is its final status)."""

    def interrupt_processed(self, *, cut: int, discarded: int) -> None:
        """An INTERRUPT was handled: ``cut`` requests ended, ``discarded`` queued
        STREAM frames dropped."""

    def interrupt_acknowledged(self, latency_s: float) -> None:
        """An INTERRUPT_ACK reached the socket ``latency_s`` after its INTERRUPT was read."""

    def error_sent(self, code: ErrorCode) -> None:
        """An ERROR frame was queued for the client."""


class _NoMetrics:
    """The :class:`SessionMetrics` of a session nobody measures."""

    def frames_written(self, kind: FrameKind, count: int, size: int) -> None:
        pass

    def request_ended(self, record: RequestFacts) -> None:
        pass

    def interrupt_processed(self, *, cut: int, discarded: int) -> None:
        pass

    def interrupt_acknowledged(self, latency_s: float) -> None:
        pass

    def error_sent(self, code: ErrorCode) -> None:
        pass


NO_METRICS: SessionMetrics = _NoMetrics()


def utf8_length(text: str | bytes) -> int:
    """Bytes ``text`` takes on the wire (a binary frame: its length). ``str.isascii``
    is O(1) in CPython, so the common case (JSON frames of ASCII text) costs no
    encoding."""
    return len(text) if isinstance(text, bytes) or text.isascii() else len(text.encode("utf-8"))


class ServerMetrics:
    """Every metric of one server, in its own registry.

    :param stats: called at scrape time for the levels (``sessions``,
        ``sessions_total``, ``connections``, ``requests_running``, ``tasks``);
        :meth:`AgentServer.stats <trio_agent.server.agent_server.AgentServer.stats>` in a server.
    """

    def __init__(self, stats: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        #: The last body rendered in each format, with its time (see :meth:`render`).
        self._rendered: dict[str, tuple[float, bytes]] = {}
        registry = self.registry
        if stats is not None:
            registry.register(_LevelsCollector(stats))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

        frames = counter(
            "frames_sent",
            "WebSocket frames written, by lane kind (control, stream, audio, done)",
            ("kind",),
        )
        sent_bytes = counter(
            "sent_bytes", "UTF-8 bytes of the frames written, by lane kind", ("kind",)
        )
        # Children bound once: a label lookup per frame would cost more than the count.
        self._frames = {kind: frames.labels(kind=kind.value) for kind in FrameKind}
        self._bytes = {kind: sent_bytes.labels(kind=kind.value) for kind in FrameKind}
        self.requests = counter(
            "requests",
            "requests ended (DONE written), by agent and final status",
            ("agent", "status"),
        )
        self.interrupts = counter("interrupts", "INTERRUPT frames handled")
        self.requests_interrupted = counter("requests_interrupted", "requests cut by an INTERRUPT")
        self.stream_frames_discarded = counter(
            "stream_frames_discarded",
            "queued STREAM frames dropped because their request was interrupted",
        )
        self.protocol_errors = counter(
            "protocol_errors", "ERROR frames sent to clients, by code", ("code",)
        )
        self.interrupt_ack_seconds = Histogram(
            "interrupt_ack_seconds",
            "server-side interrupt handling time: INTERRUPT read to INTERRUPT_ACK written",
            namespace=NAMESPACE,
            registry=registry,
            buckets=INTERRUPT_ACK_BUCKETS,
        )
        self.http_responses = counter(
            "http_responses",
            "plain HTTP responses (not WebSocket handshakes), by status",
            ("code",),
        )
        self.handshakes_refused = counter(
            "handshakes_refused",
            "WebSocket handshakes refused (no session created), by HTTP status",
            ("code",),
        )

    # -- SessionMetrics ------------------------------------------------------------------

    def frames_written(self, kind: FrameKind, count: int, size: int) -> None:
        self._frames[kind].inc(count)
        self._bytes[kind].inc(size)

    def request_ended(self, record: RequestFacts) -> None:
        status = record.status.value if record.status is not None else "unknown"
        self.requests.labels(agent=record.agent, status=status).inc()

    def interrupt_processed(self, *, cut: int, discarded: int) -> None:
        self.interrupts.inc()
        if cut:
            self.requests_interrupted.inc(cut)
        if discarded:
            self.stream_frames_discarded.inc(discarded)

    def interrupt_acknowledged(self, latency_s: float) -> None:
        self.interrupt_ack_seconds.observe(latency_s)

    def error_sent(self, code: ErrorCode) -> None:
        self.protocol_errors.labels(code=code.value).inc()

    # -- HTTP ----------------------------------------------------------------------------

    def add_cluster(self, stats: Callable[[], Mapping[str, float]]) -> None:
        """Export a cluster node's counts (read at scrape time) as ``trio_agent_cluster_*``."""
        self.registry.register(_ClusterCollector(stats))
        self._rendered.clear()

    def http_response(self, status: int) -> None:
        self.http_responses.labels(code=str(status)).inc()

    def handshake_refused(self, status: int) -> None:
        self.handshakes_refused.labels(code=str(status)).inc()

    def render(
        self, accept: str = "", *, now: float | None = None, max_age_s: float = 0.0
    ) -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from an ``Accept``
        header (Prometheus text format by default, OpenMetrics when asked for).

        With ``now`` (a monotonic time) and ``max_age_s``, a body rendered less than
        ``max_age_s`` before ``now`` in the same format is returned again: rendering
        walks every metric, and a client that asks in a loop must not make the server
        do that more than once per ``max_age_s``.
        """
        encoder, content_type = choose_encoder(accept)
        if now is not None:
            cached = self._rendered.get(content_type)
            if cached is not None and 0 <= now - cached[0] < max_age_s:
                return cached[1], content_type
        body = encoder(self.registry)
        if now is not None:
            self._rendered[content_type] = (now, body)
        return body, content_type


class _ClusterCollector(Collector):
    """Reads a cluster node's counts at scrape time (``docs/cluster.md``): each key of
    the mapping is a metric ``trio_agent_cluster_<key>``; keys ending in ``_total``
    are counters, the others gauges."""

    def __init__(self, stats: Callable[[], Mapping[str, float]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for key, value in sorted(self._stats().items()):
            name = f"{NAMESPACE}_cluster_{key}"
            doc = f"cluster: {key.replace('_', ' ')}"
            if key.endswith("_total"):
                yield CounterMetricFamily(name.removesuffix("_total"), doc, value=value)
            else:
                yield GaugeMetricFamily(name, doc, value=value)


class _LevelsCollector(Collector):
    """Reads the server's levels at scrape time."""

    _GAUGES = (
        ("sessions", "sessions_open", "WebSocket sessions open"),
        ("connections", "connections_open", "TCP connections open (sessions and plain HTTP)"),
        ("requests_running", "requests_running", "requests running in all sessions"),
        ("tasks", "tasks", "live Trio tasks under the server"),
    )

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for key, name, doc in self._GAUGES:
            if key in stats:
                yield GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, value=stats[key])
        if "sessions_total" in stats:
            yield CounterMetricFamily(
                f"{NAMESPACE}_sessions", "WebSocket sessions opened", value=stats["sessions_total"]
            )
