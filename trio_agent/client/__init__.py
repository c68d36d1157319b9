"""The Python client: stream responses, interrupt them optimistically, check the server.

``state`` is the client's side of a connection as a pure state machine (like
h11's ``Connection``); ``connection`` is the Trio shell around it; ``playback``
plays or records spoken responses. ``docs/client.md`` explains the optimistic
interrupt. The names below are the public ones; the modules are internal.
"""

from trio_agent.client.connection import (
    AckInfo,
    AckTimeout,
    AgentClient,
    AgentClientError,
    ClientClosed,
    ConnectionFailed,
    ConnectionLost,
    HeartbeatTimeout,
    InterruptHandle,
    ProtocolViolation,
    Response,
    ServerError,
    check_token,
    open_agent_client,
)
from trio_agent.client.playback import (
    PlayerSink,
    Sink,
    WavFileSink,
)
from trio_agent.client.state import (
    AudioChunk,
    Chunk,
    ClientState,
    DoneInfo,
)

__all__ = [
    "AckInfo",
    "AckTimeout",
    "AgentClient",
    "AgentClientError",
    "AudioChunk",
    "Chunk",
    "ClientClosed",
    "ClientState",
    "ConnectionFailed",
    "ConnectionLost",
    "DoneInfo",
    "HeartbeatTimeout",
    "InterruptHandle",
    "PlayerSink",
    "ProtocolViolation",
    "Response",
    "ServerError",
    "Sink",
    "WavFileSink",
    "check_token",
    "open_agent_client",
]
