"""Server settings: one table, read from CLI flags and ``TRIO_AGENT_*`` variables.

A flag beats the variable, the variable beats the default; ``docs/protocol.md``
("Limits and settings") lists them all.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Settings = TypeVar("Settings", bound=DataclassInstance)

from trio_agent.observability.logs import LogFormat
from trio_agent.protocol.constants import DEFAULT_HOST, DEFAULT_PATH, DEFAULT_PORT, TOKEN_CHARACTERS
from trio_agent.server.origins import (
    parse_allowed_hosts,
    parse_allowed_origins,
    parse_trusted_proxies,
)
from trio_agent.settings import add_arguments, setting, settings_from

LaneMode = Literal["priority", "fifo"]
SpeechMode = Literal["auto", "espeak-ng", "builtin", "off"]


@dataclass(frozen=True)
class ServerConfig:
    """Everything that shapes a running server. Immutable; use :func:`dataclasses.replace`."""

    host: str = setting(DEFAULT_HOST, "interface to listen on")
    port: int = setting(DEFAULT_PORT, "TCP port (0 picks a free one)")
    path: str = setting(DEFAULT_PATH, "WebSocket path; other paths get HTTP 404")
    max_message_bytes: int = setting(
        1_048_576, "largest client WebSocket message, in bytes; bigger closes with 1009"
    )
    max_input_bytes: int = setting(
        65_536, "largest REQUEST input (UTF-8 bytes); bigger gets ERROR MESSAGE_TOO_LARGE"
    )
    stream_lane_capacity: int = setting(
        32, "STREAM frames queued per connection before agents wait (backpressure)"
    )
    write_batch_frames: int = setting(
        8,
        "frames the writer may send in one socket write when more are queued (1: a write "
        "per frame)",
    )
    priority_lane_capacity: int = setting(
        256, "control frames queued per connection before the session is closed with 1008"
    )
    max_concurrent_requests: int = setting(
        8, "requests one session may run at once (TOO_MANY_REQUESTS past that)"
    )
    request_timeout_cap_s: float = setting(
        300.0, "upper bound of a request's timeout_s in seconds, and its timeout when it gives none"
    )
    idle_timeout_s: float = setting(
        120.0,
        "seconds without a frame from the client before the session closes with 1001 (0: never)",
    )
    resume_window_s: float = setting(
        30.0,
        "seconds a session whose connection dropped waits for a RESUME before its requests are "
        "cancelled (0: no resumption, a session ends with its connection)",
    )
    resume_buffer_kib: int = setting(
        256, "KiB of written frames a session keeps to replay on a RESUME (oldest evicted first)"
    )
    # -- cluster: see docs/cluster.md
    redis_url: str = setting(
        "",
        "Redis or Valkey URL (redis://host:port/db); set, the server is a node of a cluster "
        "whose sessions resume on any node ('': a single process, nothing shared)",
        secret=True,
    )
    node_id: str = setting(
        "", "this node's name in the cluster ('': host, pid and a random suffix)"
    )
    node_lease_s: float = setting(
        3.0,
        "seconds a node's liveness lease lasts in Redis (refreshed every third of it); a node "
        "silent that long is dead and its requests end with DONE NODE_LOST",
    )
    drain_s: float = setting(
        30.0,
        "seconds a draining node (SIGTERM, in a cluster) lets running requests finish before it "
        "ends them with DONE shutdown; each connection is closed with 1012 so the client resumes "
        "on another node",
    )
    workers: int = setting(
        1,
        "processes serving the one port (SO_REUSEPORT), each a node; a resume may land on any "
        "of them, so resumption across them needs --redis-url",
    )
    handshake_timeout_s: float = setting(
        10.0, "seconds a new connection may take to complete the WebSocket handshake"
    )
    cleanup_grace_s: float = setting(
        2.0, "seconds a session waits for cancelled agents to finish cleaning up"
    )
    shutdown_grace_s: float = setting(5.0, "seconds shutdown waits for sessions to flush and close")
    # -- hardening: see docs/security.md
    max_sessions: int = setting(1000, "sessions open at once; the next handshake gets HTTP 503")
    send_timeout_s: float = setting(
        10.0, "seconds a connection's writes may make no progress before it is aborted (0: never)"
    )
    rate_limit_per_s: float = setting(
        50.0, "client frames per second per session (token bucket; 0: no limit)"
    )
    rate_limit_burst: int = setting(100, "client frames a session may send at once")
    rate_limit_close_after: int = setting(
        100, "frames refused with RATE_LIMITED in one flood before the session is closed with 1008"
    )
    # -- memory and CPU a client may cost: see docs/security.md ("Slow readers", "Floods")
    priority_lane_bytes: int = setting(
        262_144,
        "bytes of control frames queued per connection before the session is closed with 1008",
    )
    stream_lane_bytes: int = setting(
        524_288, "bytes of STREAM frames queued per connection before agents wait (backpressure)"
    )
    ws_frame_rate_per_s: float = setting(
        1000.0,
        "WebSocket frames per second per connection, every frame counted (data, continuation, "
        "ping, pong, close; token bucket); past it the connection is closed with 1008 (0: no limit)",
    )
    ws_frame_burst: int = setting(2000, "WebSocket frames a connection may send at once")
    token: str = setting(
        "",
        "shared secret clients must present (Authorization: Bearer, ?token= or subprotocol "
        "trio-agent.token.<TOKEN>); prefer the environment variable to the flag; empty: none",
        secret=True,
    )
    allow_origin: str = setting(
        "",
        "comma-separated origins a browser may connect from, or '*'; empty: the page's "
        "origin must match the Host it connects to",
    )
    # -- who may reach the server, and how much of it one client may take (docs/security.md)
    allow_host: str = setting(
        "",
        "host names clients may address without a token, besides IP addresses, localhost "
        "and *.localhost (comma-separated or repeated; '.example.com' for a domain and its "
        "subdomains; '*': any); others get HTTP 403",
        repeatable=True,
    )
    max_sessions_per_address: int = setting(
        100, "sessions open at once from one client address; the next handshake gets 503 (0: off)"
    )
    trust_forwarded_for: str = setting(
        "",
        "comma-separated addresses (or networks) of reverse proxies whose X-Forwarded-For "
        "names the client address; empty: the client address is the peer's",
    )
    metrics_token: str = setting(
        "",
        "when set, GET /metrics requires 'Authorization: Bearer <METRICS_TOKEN>' (401 "
        "otherwise); prefer the environment variable to the flag",
        secret=True,
    )
    metrics_cache_s: float = setting(
        1.0,
        "seconds a rendered /metrics body is served again before it is rendered anew (0: every time)",
    )
    certfile: str = setting("", "TLS certificate chain (PEM); with --keyfile, serves wss://")
    keyfile: str = setting("", "TLS private key (PEM) of --certfile; empty: it is in --certfile")
    slow_step_warn_s: float = setting(
        0.0,
        "seconds a task may run without a checkpoint before a warning (0: off; it times "
        "every task step, so turn it on to find an agent that freezes the server)",
    )
    stats_interval_s: float = setting(
        0.0, "seconds between DEBUG 'server stats' lines (sessions, live tasks; 0: never)"
    )
    tcp_notsent_lowat: int = setting(
        0,
        "bytes of unsent data the kernel may hold per TCP connection (Linux TCP_NOTSENT_LOWAT; "
        "0: Trio's own setting, 16384, which its SocketStream sets on every TCP connection)",
    )
    default_agent: str = setting("lorem", "agent used by a REQUEST that names none")
    speech: SpeechMode = setting(
        "auto",
        "synthesiser of spoken replies: 'auto' (espeak-ng when installed, else built-in), "
        "'espeak-ng', 'builtin' or 'off'",
        choices=("auto", "espeak-ng", "builtin", "off"),
    )
    audio_chunk_ms: float = setting(20.0, "milliseconds of audio per AUDIO chunk")
    audio_lead_ms: float = setting(
        20.0,
        "milliseconds a paced reply may send its audio ahead of real time "
        "(0: each chunk at its time)",
    )
    audio_queue_ms: float = setting(
        200.0,
        "milliseconds of AUDIO queued per connection before a speaking request waits",
    )
    web: bool = setting(
        True,
        "serve the demo page at / (--no-web: the client module, health and metrics stay)",
    )
    lanes: LaneMode = setting(
        "priority",
        "outbound lanes: 'priority', or 'fifo' (diagnostic: ACK queues behind stream frames)",
        choices=("priority", "fifo"),
    )
    trace: str = setting(
        "",
        "append one JSON line per cancellation event to this file ('' = off; see docs/cancellation.md)",
    )
    log_level: str = setting(
        "INFO",
        "TRACE (DEBUG, and the client's frames as read, cut short), DEBUG (handshakes, protocol "
        "errors, cancellations), INFO, WARNING or ERROR",
    )
    log_format: LogFormat = setting(
        "text", "'text' or 'json' (one JSON object per line)", choices=("text", "json")
    )

    def __post_init__(self) -> None:
        positive = (
            "max_message_bytes",
            "max_input_bytes",
            "stream_lane_capacity",
            "write_batch_frames",
            "priority_lane_capacity",
            "max_concurrent_requests",
            "request_timeout_cap_s",
            "max_sessions",
            "rate_limit_burst",
            "priority_lane_bytes",
            "stream_lane_bytes",
            "ws_frame_burst",
            "node_lease_s",
            "workers",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "tcp_notsent_lowat",
            "idle_timeout_s",
            "resume_window_s",
            "resume_buffer_kib",
            "handshake_timeout_s",
            "cleanup_grace_s",
            "shutdown_grace_s",
            "send_timeout_s",
            "rate_limit_per_s",
            "rate_limit_close_after",
            "ws_frame_rate_per_s",
            "slow_step_warn_s",
            "stats_interval_s",
            "max_sessions_per_address",
            "metrics_cache_s",
            "drain_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        if not self.audio_chunk_ms > 0 or not self.audio_queue_ms > 0:
            raise ValueError("audio_chunk_ms and audio_queue_ms must be positive")
        if not 0 <= self.audio_lead_ms <= self.audio_queue_ms:
            raise ValueError("audio_lead_ms must be between 0 and audio_queue_ms")
        if self.speech not in ("auto", "espeak-ng", "builtin", "off"):
            raise ValueError("speech must be 'auto', 'espeak-ng', 'builtin' or 'off'")
        if self.lanes not in ("priority", "fifo"):
            raise ValueError("lanes must be 'priority' or 'fifo'")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be 'text' or 'json'")
        if not set(self.token) <= TOKEN_CHARACTERS:
            raise ValueError(
                "token may only use letters, digits and !#$%&'*+-.^_`|~ "
                "(it must fit a header, a subprotocol and a query string)"
            )
        parse_allowed_origins(self.allow_origin)  # raises ValueError on a bad entry
        parse_allowed_hosts(self.allow_host)
        parse_trusted_proxies(self.trust_forwarded_for)
        if not set(self.metrics_token) <= TOKEN_CHARACTERS:
            raise ValueError("metrics_token may only use the characters of a token (see token)")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if len(self.node_id) > 64 or not set(self.node_id) <= TOKEN_CHARACTERS:
            raise ValueError("node_id: at most 64 characters of a token (letters, digits, -._~)")
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile needs certfile")

    @property
    def clustered(self) -> bool:
        """Whether this server is a node of a cluster (``redis_url`` is set)."""
        return bool(self.redis_url)

    @property
    def tls(self) -> bool:
        return bool(self.certfile)

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{self.path}"


def add_config_arguments(parser: argparse._ActionsContainer) -> None:
    """Add one ``--flag`` per field of :class:`ServerConfig` to ``parser``."""
    add_arguments(parser, ServerConfig)


def config_from(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Build a config from parsed flags, then ``TRIO_AGENT_*`` variables, then defaults."""
    return settings_from(ServerConfig, args, environ)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse ``argv`` (flags only) into a config; handy in tests."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from(parser.parse_args(list(argv)), environ)
