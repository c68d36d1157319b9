"""What the user sees of a reply: its text chunks, its audio chunks, how it ended.

Plain frozen values, built by :mod:`trio_agent.client.state` from the server's
frames (or from the client's own optimistic cut) and handed to the application.
"""

from __future__ import annotations

from dataclasses import dataclass

from trio_agent.protocol.audio import AudioHeader
from trio_agent.protocol.messages import DonePayload, DoneStatus, ErrorInfo

__all__ = ["AudioChunk", "Chunk", "DoneInfo"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a reply: a STREAM frame's ``seq`` and ``delta``, and, when the
    reply is spoken, ``start_ms``: where its words start in the reply's audio."""

    seq: int
    delta: str
    start_ms: float | None = None


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """One AUDIO frame of a spoken reply: its samples and where they sit in it.

    ``samples`` are raw ``format`` bytes (``pcm_s16le``: signed 16-bit
    little-endian, ``channels`` interleaved) at ``sample_rate``; always use the
    chunk's own rate, servers differ. ``start_ms`` is the chunk's offset in the
    spoken reply and ``duration_ms`` its length, so ``end_ms`` is where the next
    chunk starts.
    """

    seq: int
    start_ms: float
    duration_ms: float
    sample_rate: int
    channels: int
    samples: bytes
    format: str = "pcm_s16le"

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms

    @classmethod
    def from_frame(cls, header: AudioHeader, samples: bytes) -> AudioChunk:
        return cls(
            seq=header.seq,
            start_ms=header.start_ms,
            duration_ms=header.duration_ms,
            sample_rate=header.sample_rate,
            channels=header.channels,
            samples=samples,
            format=header.format,
        )


@dataclass(frozen=True, slots=True)
class DoneInfo:
    """How a request ended: the payload of its DONE frame, or the client's own cut.

    ``local`` is true when the client decided the end itself (an optimistic
    interrupt) and no DONE had been read yet; ``frames`` is then the number of
    chunks that had arrived before the cut.

    A spoken reply's DONE adds ``audio_ms`` (audio the server wrote to the
    socket), ``heard_ms`` (the ``played_ms`` of the INTERRUPT that cut it, capped
    by ``audio_ms``; else ``audio_ms``) and ``heard_text`` (the words whose audio
    lies wholly within ``heard_ms``). A local end leaves them ``None``: only the
    server knows what it wrote; see :attr:`RequestState.server_done`.
    """

    status: DoneStatus
    interrupted: bool
    frames: int
    reason: str | None = None
    error: ErrorInfo | None = None
    local: bool = False
    audio_ms: float | None = None
    heard_ms: float | None = None
    heard_text: str | None = None

    @classmethod
    def from_payload(cls, payload: DonePayload) -> DoneInfo:
        return cls(
            status=payload.status,
            interrupted=payload.interrupted,
            frames=payload.frames,
            reason=payload.reason,
            error=payload.error,
            audio_ms=payload.audio_ms,
            heard_ms=payload.heard_ms,
            heard_text=payload.heard_text,
        )
