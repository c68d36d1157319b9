"""What the client state tracks (requests, interrupts, frames to send) and the
events it reports for each frame received; the machine itself is
:class:`trio_agent.client.state.ClientState`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trio_agent.client.reply import AudioChunk, Chunk, DoneInfo
from trio_agent.protocol.messages import (
    ErrorInfo,
    ErrorMessage,
    InterruptAckPayload,
    ResumedPayload,
    SessionMessage,
)

# --------------------------------------------------------------------------- the client state


@dataclass(eq=False)
class RequestState:
    """One request, from the moment the client queues its REQUEST until the server
    has said its last word about it (its DONE, or an ERROR refusing it)."""

    request_id: str
    msg_id: str
    #: True when the REQUEST asked for speech (``options.voice``).
    voice: bool = False
    #: Chunks that arrived and were not consumed yet. Unbounded on purpose: the
    #: reader must never wait for a slow consumer (see docs/client.md).
    chunks: deque[Chunk] = field(default_factory=deque)
    #: The delta of every chunk that arrived before the request ended locally.
    parts: list[str] = field(default_factory=list)
    #: STREAM frames of this request dropped because they came after the local cut.
    stale_dropped: int = 0
    #: The ``msg_id`` of the INTERRUPT that ended it locally.
    cut_by: str | None = None
    #: The end the user sees: the local cut, or else the server's DONE.
    done: DoneInfo | None = None
    #: The DONE the server sent, once read (after a local cut too).
    server_done: DoneInfo | None = None
    #: The ERROR that refused the REQUEST (``code``/``message``).
    error: ErrorInfo | None = None
    #: Audio chunks that arrived and were not consumed yet (unbounded, like ``chunks``).
    audio: deque[AudioChunk] = field(default_factory=deque)
    #: AUDIO frames that arrived before the request ended locally.
    audio_frames: int = 0
    #: Milliseconds of audio that arrived before the request ended locally.
    audio_received_ms: float = 0.0
    #: Milliseconds of audio the application has taken from ``audio``: the default
    #: playback clock (see :attr:`trio_agent.client.response.Response.played_ms`).
    audio_consumed_ms: float = 0.0
    #: AUDIO frames of this request dropped because they came after the local cut.
    stale_audio_dropped: int = 0
    #: The REQUEST frame, and whether it was handed to a socket (a RESUME names it then).
    outgoing: Outgoing | None = None
    sent: bool = False
    #: The last STREAM and AUDIO ``seq`` received, stale ones too (-1: none): what a
    #: RESUME sends as ``last_seq`` and ``last_audio_seq``.
    last_seq: int = -1
    last_audio_seq: int = -1

    def take_audio(self) -> AudioChunk:
        """Pop the next audio chunk and advance the consumed-audio clock."""
        chunk = self.audio.popleft()
        self.audio_consumed_ms += chunk.duration_ms
        return chunk

    @property
    def ended(self) -> bool:
        """Over for the user: cut locally, done, or refused."""
        return self.done is not None or self.error is not None

    @property
    def settled(self) -> bool:
        """Over for the server too: its DONE or its ERROR has been read."""
        return self.server_done is not None or self.error is not None

    @property
    def frames(self) -> int:
        """Chunks that arrived before the request ended locally."""
        return len(self.parts)


@dataclass(eq=False)
class InterruptState:
    """One INTERRUPT waiting for its answer."""

    msg_id: str
    request_id: str | None
    reason: str
    #: The requests this INTERRUPT ended locally, in the order they were sent.
    cut: tuple[RequestState, ...]
    #: The INTERRUPT frame, and whether it was handed to a socket.
    outgoing: Outgoing | None = None
    sent: bool = False

    @property
    def stale_dropped(self) -> int:
        """Stale frames dropped so far for the requests this INTERRUPT cut locally."""
        return sum(state.stale_dropped for state in self.cut)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A frame to send: its text, and its wire form for the guarantee checker."""

    msg_id: str
    text: str
    frame: Mapping[str, Any]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Opened:
    """The SESSION frame arrived."""

    session: SessionMessage


@dataclass(frozen=True, slots=True)
class Reopened:
    """The SESSION frame of a connection opened to resume the session (v1.2); the
    session is still the first one, its id the first SESSION's."""

    session: SessionMessage


@dataclass(frozen=True, slots=True)
class Resumed:
    """RESUMED: the connection speaks for the session again. ``resend`` are frames
    written to the dropped connection that the server never saw (a REQUEST it does
    not list, an INTERRUPT it does not list as processed); send them first."""

    payload: ResumedPayload
    resend: tuple[Outgoing, ...]


@dataclass(frozen=True, slots=True)
class ResumeRefused:
    """The server answered the RESUME with an ERROR (RESUME_UNKNOWN, RESUME_DENIED)."""

    error: ErrorMessage


@dataclass(frozen=True, slots=True)
class RequestUpdated:
    """A chunk arrived for ``state``, or it ended, or the server's last word came."""

    state: RequestState


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The INTERRUPT_ACK of ``interrupt`` arrived."""

    interrupt: InterruptState
    payload: InterruptAckPayload


@dataclass(frozen=True, slots=True)
class InterruptRefused:
    """The server answered ``interrupt`` with an ERROR instead of an ACK."""

    interrupt: InterruptState
    error: ErrorMessage


@dataclass(frozen=True, slots=True)
class HeartbeatAnswered:
    """The server answered the HEARTBEAT whose ``msg_id`` is ``ref``."""

    ref: str


@dataclass(frozen=True, slots=True)
class UnclaimedError:
    """An ERROR that names no REQUEST or INTERRUPT this client is waiting on."""

    error: ErrorMessage


@dataclass(frozen=True, slots=True)
class ProtocolBreach:
    """The server broke protocol v1. ``guarantee`` is the number of the broken
    guarantee in docs/protocol.md, or ``None`` when the frame itself is not a valid
    protocol v1 server frame."""

    guarantee: int | None
    message: str
    frame: str


Event = (
    Opened
    | Reopened
    | Resumed
    | ResumeRefused
    | RequestUpdated
    | Acknowledged
    | InterruptRefused
    | HeartbeatAnswered
    | UnclaimedError
    | ProtocolBreach
)
