"""Server settings: one table, read from CLI flags and ``TRIO_AGENT_*`` variables.

Each field of :class:`ServerConfig` is one setting. Its flag is the field name in
kebab case (``max_message_bytes`` -> ``--max-message-bytes``) and its environment
variable the name in upper case (``TRIO_AGENT_MAX_MESSAGE_BYTES``). A flag beats the
variable, the variable beats the default. ``docs/protocol.md`` lists them all.

An agent with settings of its own declares them the same way in a dataclass of its
own (``OpenAIConfig``), read with :func:`settings_from`. A setting whose ecosystem
already has a variable name (``OPENAI_BASE_URL``) says so with ``env=...``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Settings = TypeVar("Settings", bound=DataclassInstance)

from .admission import TOKEN_CHARACTERS, parse_allowed_origins

LogFormat = Literal["text", "json"]
LaneMode = Literal["priority", "fifo"]
SpeechMode = Literal["auto", "espeak-ng", "builtin", "off"]


def _setting(default: Any, help: str, *, secret: bool = False, **extra: Any) -> Any:
    # A secret stays out of repr(), and so out of any log line that shows a config.
    return field(default=default, repr=not secret, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServerConfig:
    """Everything that shapes a running server. Immutable; use :func:`dataclasses.replace`."""

    host: str = _setting("127.0.0.1", "interface to listen on")
    port: int = _setting(8765, "TCP port (0 picks a free one)")
    path: str = _setting("/ws", "WebSocket path; other paths get HTTP 404")
    max_message_bytes: int = _setting(
        1_048_576, "largest client WebSocket message; bigger closes the connection with 1009"
    )
    max_input_bytes: int = _setting(
        65_536, "largest REQUEST input (UTF-8 bytes); bigger gets ERROR MESSAGE_TOO_LARGE"
    )
    stream_lane_capacity: int = _setting(
        32, "STREAM frames queued per connection before agents wait (backpressure)"
    )
    write_batch_frames: int = _setting(
        8,
        "frames the writer may send in one socket write when more are queued (1: a write "
        "per frame). Batches halve the CPU per frame under load; frames already in a batch "
        "are being written, so an INTERRUPT read meanwhile no longer drops them",
    )
    priority_lane_capacity: int = _setting(
        256, "control frames queued per connection before the session is closed with 1008"
    )
    max_concurrent_requests: int = _setting(
        8, "requests one session may run at once (TOO_MANY_REQUESTS past that)"
    )
    request_timeout_cap_s: float = _setting(
        300.0, "upper bound of a request's timeout_s, and its timeout when it gives none"
    )
    idle_timeout_s: float = _setting(
        120.0,
        "close a session with 1001 after this long without a frame from the client (0: never)",
    )
    handshake_timeout_s: float = _setting(
        10.0, "how long a new connection may take to complete the WebSocket handshake"
    )
    cleanup_grace_s: float = _setting(
        2.0, "how long a session waits for cancelled agents to finish cleaning up"
    )
    shutdown_grace_s: float = _setting(
        5.0, "how long shutdown waits for sessions to flush and close"
    )
    # -- hardening: see docs/security.md
    max_sessions: int = _setting(1000, "sessions open at once; the next handshake gets HTTP 503")
    send_timeout_s: float = _setting(
        10.0, "abort a connection whose writes make no progress for this long (0: never)"
    )
    rate_limit_per_s: float = _setting(
        50.0, "client frames per second per session (token bucket; 0: no limit)"
    )
    rate_limit_burst: int = _setting(100, "client frames a session may send at once")
    rate_limit_close_after: int = _setting(
        100, "frames refused with RATE_LIMITED in one flood before the session is closed with 1008"
    )
    token: str = _setting(
        "",
        "shared secret clients must present (Authorization: Bearer, ?token= or subprotocol "
        "trio-agent.token.<TOKEN>); prefer the environment variable to the flag; empty: none",
        secret=True,
    )
    allow_origin: str = _setting(
        "",
        "comma-separated origins a browser may connect from, or '*'; empty: the page's "
        "origin must match the Host it connects to",
    )
    certfile: str = _setting("", "TLS certificate chain (PEM); with --keyfile, serves wss://")
    keyfile: str = _setting("", "TLS private key (PEM) of --certfile; empty: it is in --certfile")
    slow_step_warn_s: float = _setting(
        0.5, "warn when a task runs this long without a checkpoint, freezing all sessions (0: off)"
    )
    stats_interval_s: float = _setting(
        0.0, "log a DEBUG 'server stats' line (sessions, live tasks) every N s (0: never)"
    )
    tcp_notsent_lowat: int = _setting(
        0,
        "bytes of unsent data the kernel may hold per TCP connection (Linux TCP_NOTSENT_LOWAT; "
        "0: the system default). Small values keep frames in the lanes, where an INTERRUPT "
        "can overtake and drop them, instead of in the kernel, where it cannot",
    )
    default_agent: str = _setting("lorem", "agent used by a REQUEST that names none")
    speech: SpeechMode = _setting(
        "auto",
        "synthesiser of spoken replies: 'auto' (espeak-ng when installed, else built-in), "
        "'espeak-ng', 'builtin' or 'off'",
        choices=("auto", "espeak-ng", "builtin", "off"),
    )
    audio_chunk_ms: float = _setting(20.0, "milliseconds of audio per AUDIO chunk")
    audio_lead_ms: float = _setting(
        20.0,
        "how far ahead of real time a paced reply may send its audio: chunks starting "
        "within this much of now leave together, in one write (0: each chunk at its time)",
    )
    audio_queue_ms: float = _setting(
        200.0,
        "milliseconds of AUDIO queued per connection before a speaking request waits: "
        "the most speech a barge-in can find buffered on the server",
    )
    web: bool = _setting(
        True,
        "serve the demo page at / (--no-web: the client module, health and metrics stay)",
    )
    lanes: LaneMode = _setting(
        "priority",
        "outbound lanes: 'priority' (the design) or 'fifo' (diagnostic: ACK queues behind stream frames)",
        choices=("priority", "fifo"),
    )
    trace: str = _setting(
        "",
        "append one JSON line per cancellation event to this file ('' = off; see docs/cancellation.md)",
    )
    log_level: str = _setting("INFO", "TRACE, DEBUG (logs frames), INFO, WARNING or ERROR")
    log_format: LogFormat = _setting(
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
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "tcp_notsent_lowat",
            "idle_timeout_s",
            "handshake_timeout_s",
            "cleanup_grace_s",
            "shutdown_grace_s",
            "send_timeout_s",
            "rate_limit_per_s",
            "rate_limit_close_after",
            "slow_step_warn_s",
            "stats_interval_s",
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
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile needs certfile")

    @property
    def tls(self) -> bool:
        return bool(self.certfile)

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{self.path}"


ENV_PREFIX = "TRIO_AGENT_"


_BOOLEANS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def _convert(kind: Any, raw: str) -> Any:
    if kind in (bool, "bool"):
        if raw.strip().lower() not in _BOOLEANS:
            raise ValueError(f"{raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")
        return _BOOLEANS[raw.strip().lower()]
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    return raw


def _parser_for(kind: Any) -> Callable[[str], Any]:
    return lambda raw: _convert(kind, raw)


def _env_name(f: Field[Any]) -> str:
    return str(f.metadata.get("env") or ENV_PREFIX + f.name.upper())


def add_config_arguments(
    parser: argparse._ActionsContainer, settings: type[DataclassInstance] = ServerConfig
) -> None:
    """Add one ``--flag`` per field of ``settings`` (:class:`ServerConfig`) to ``parser``."""
    for f in fields(settings):
        flag = "--" + f.name.replace("_", "-")
        env = _env_name(f)
        default = f.default if f.default is not MISSING else None
        if f.type in (bool, "bool"):
            # --web / --no-web
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f"{f.metadata.get('help', '')} (env {env}=1|0; default {default!r})",
            )
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            type=_parser_for(f.type),
            choices=f.metadata.get("choices"),
            help=f"{f.metadata.get('help', '')} (env {env}; default {default!r})",
        )


def config_from(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Build a config from parsed flags, then ``TRIO_AGENT_*`` variables, then defaults."""
    return settings_from(ServerConfig, args, environ)


def settings_from(
    settings: type[Settings],
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build ``settings`` from parsed flags, then environment variables, then defaults.

    Raises ``ValueError`` naming the variable or the setting that is not valid.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(settings):
        from_flag = getattr(args, f.name, None) if args is not None else None
        if from_flag is not None:
            values[f.name] = from_flag
        elif (raw := environ.get(_env_name(f))) is not None:
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError:
                raise ValueError(f"{_env_name(f)}={raw!r} is not valid") from None
    return replace(settings(), **values)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Parse ``argv`` (flags only) into a config; handy in tests."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from(parser.parse_args(list(argv)), environ)
