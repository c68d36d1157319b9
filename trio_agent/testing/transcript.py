"""What a raw connection records: transcript lines, decoded AUDIO frames, and a
frame summarized in one line.

Plain data and pure functions: the connection of :mod:`trio_agent.testing.wire`
fills them in, and a report prints them without holding a connection. Everything
here is also importable from :mod:`trio_agent.testing.wire`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trio_agent.protocol.audio import AudioHeader
from trio_agent.protocol.guarantees import Violation

Frame = dict[str, Any]


@dataclass(frozen=True)
class TranscriptLine:
    """One frame of the conversation, and the guarantees it was seen to break."""

    sent: bool
    frame: Frame
    violations: tuple[Violation, ...] = ()

    def __str__(self) -> str:
        line = f"{'->' if self.sent else '<-'} {summarize(self.frame)}"
        return line + "".join(f"   <-- {v}" for v in self.violations)


@dataclass(frozen=True)
class AudioFrame:
    """One AUDIO binary message (protocol v1.1), decoded: its header and its samples."""

    header: AudioHeader
    #: The raw ``pcm_s16le`` samples, interleaved if the header has several channels.
    samples: bytes

    @property
    def request_id(self) -> str:
        return self.header.request_id

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def start_ms(self) -> float:
        return self.header.start_ms

    @property
    def duration_ms(self) -> float:
        return self.header.duration_ms


def summarize(frame: Frame) -> str:
    """One frame in a line: ``STREAM r1 seq=3``, ``DONE r1 interrupted frames=4``,
    ``AUDIO r1 seq=2 start_ms=40.0 duration_ms=20.0``..."""
    kind = frame.get("msg_type")
    if kind is None:
        return str(frame.get("end") or frame.get("raw") or frame)
    rid = frame.get("request_id")
    payload = frame.get("payload") or {}
    parts = [str(kind)] + ([str(rid)] if rid else [])
    if kind == "REQUEST":
        parts.append(f"({frame.get('msg_id')}) agent={payload.get('agent')}")
        if "timeout_s" in payload:
            parts.append(f"timeout_s={payload['timeout_s']}")
    elif kind == "INTERRUPT":
        parts.append(f"({frame.get('msg_id')})" + ("" if rid else " all"))
    elif kind == "STREAM":
        parts.append(f"seq={payload.get('seq')}")
    elif kind == "AUDIO":
        parts.append(
            f"seq={frame.get('seq')} start_ms={frame.get('start_ms')}"
            f" duration_ms={frame.get('duration_ms')}"
        )
    elif kind == "DONE":
        parts.append(f"{payload.get('status')} frames={payload.get('frames')}")
        if payload.get("error"):
            parts.append(f"error={payload['error']}")
    elif kind == "INTERRUPT_ACK":
        parts.append(
            f"ref={frame.get('ref')} interrupted={payload.get('interrupted')}"
            + (f" targets={payload['targets']}" if payload.get("targets") else "")
        )
    elif kind == "ERROR":
        parts.append(f"{payload.get('code')}: {payload.get('message')}")
    return " ".join(parts)
