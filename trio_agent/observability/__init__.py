"""What a running server tells about itself: logs, traces, metrics, timelines.

``docs/cancellation.md`` (trace mode, timelines) and ``docs/web.md`` (metrics)
explain them. This layer sees the server only through the facts it is handed;
it imports nothing of the server. The modules are internal.
"""

from trio_agent.observability.events import (
    SessionEvents,
    session_events,
)
from trio_agent.observability.logs import (
    LogFormat,
    configure_logging,
)
from trio_agent.observability.metrics import (
    NO_METRICS,
    ServerMetrics,
    SessionMetrics,
)
from trio_agent.observability.timeline import (
    InterruptStory,
    describe,
    interrupt_stories,
    load_trace,
    narrate,
    narrate_events,
    pick_story,
    timeout_story,
)
from trio_agent.observability.trace import (
    NO_TRACE,
    JsonLinesTracer,
    MemoryTracer,
    RecordingTracer,
    SessionTrace,
    Tracer,
    tracer_for,
)

__all__ = [
    "NO_METRICS",
    "NO_TRACE",
    "InterruptStory",
    "JsonLinesTracer",
    "LogFormat",
    "MemoryTracer",
    "RecordingTracer",
    "ServerMetrics",
    "SessionEvents",
    "SessionMetrics",
    "SessionTrace",
    "Tracer",
    "configure_logging",
    "describe",
    "interrupt_stories",
    "load_trace",
    "narrate",
    "narrate_events",
    "pick_story",
    "session_events",
    "timeout_story",
    "tracer_for",
]
