"""The Python client: stream responses, interrupt them optimistically, check the server.

``state`` keeps the client state of a connection as a pure state machine (like
h11's ``Connection``); ``connection`` is the Trio shell around it; ``response``
holds what a request and an interrupt give back; ``errors`` what the client
raises; ``playback`` plays or records spoken responses. ``docs/client.md``
explains the optimistic interrupt. The names below are the public ones; the
modules are internal.
"""

from trio_agent.client.connection import (
    AgentClient,
    open_agent_client,
)
from trio_agent.client.errors import (
    AckTimeout,
    AgentClientError,
    ClientClosed,
    ConnectionFailed,
    ConnectionLost,
    HeartbeatTimeout,
    ProtocolViolation,
    ServerError,
)
from trio_agent.client.playback import (
    PlayerSink,
    Sink,
    WavFileSink,
)
from trio_agent.client.response import (
    AckInfo,
    InterruptHandle,
    Response,
)
from trio_agent.client.resumption import ConnectionEvent
from trio_agent.client.state import (
    AudioChunk,
    Chunk,
    ClientState,
    DoneInfo,
)
from trio_agent.client.websocket import check_token
from trio_agent.protocol.messages import AudioFormat

__all__ = [
    "AckInfo",
    "AckTimeout",
    "AgentClient",
    "AgentClientError",
    "AudioChunk",
    "AudioFormat",
    "Chunk",
    "ClientClosed",
    "ClientState",
    "ConnectionEvent",
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
