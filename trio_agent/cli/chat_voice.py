"""How ``trio-agent chat --voice`` speaks: its settings from the flags, the audio of
the reply on screen, and the notes about voices and what was heard.

The sinks themselves are in :mod:`trio_agent.client.playback`; docs/client.md
("chat --voice") describes the flags and the barge-in.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import trio

from trio_agent.client import AgentClient, DoneInfo, PlayerSink, Sink, WavFileSink
from trio_agent.protocol.constants import DEFAULT_URL

__all__ = [
    "DEFAULT_WAV",
    "Speech",
    "VoiceSettings",
    "describe_heard",
    "describe_voice",
    "voice_settings",
]

#: Where ``--voice`` writes replies when given neither ``--wav`` nor ``--play``.
DEFAULT_WAV = "trio-agent-{request_id}.wav"


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    """How the chat speaks replies.

    :param voice: the voice to ask for (``True``: the server's default).
    :param wav: a path for each reply's WAV file; ``{request_id}`` in it is
        replaced by the reply's id (without it, each reply overwrites the last).
    :param play: a player command, given each reply's audio on its stdin.
    :param audio_pace: the ``audio_pace`` request option (``None``: the server's).
    """

    voice: str | bool = True
    wav: str | None = None
    play: str | None = None
    audio_pace: float | None = None

    def sinks(self, request_id: str) -> list[Sink]:
        sinks: list[Sink] = []
        if self.wav is not None:
            sinks.append(WavFileSink(Path(self.wav.replace("{request_id}", request_id))))
        if self.play is not None:
            sinks.append(PlayerSink(self.play))
        return sinks


class Speech:
    """The audio of the reply on screen: its sinks, and the cancel scope of the task
    that feeds them. :meth:`silence` is the barge-in."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self.scope = trio.CancelScope()

    def players(self) -> list[PlayerSink]:
        return [sink for sink in self.sinks if isinstance(sink, PlayerSink)]

    @property
    def playing(self) -> bool:
        """A player of this reply is still running (it may play on after the reply ended)."""
        return any(player.running for player in self.players())

    def silence(self) -> None:
        """Stop the sound now (kill the players, synchronously), then let the task
        clean up: its scope is cancelled, and its ``finally`` reaps the players."""
        for player in self.players():
            player.halt()
        self.scope.cancel(reason="barge-in")


def voice_settings(args: argparse.Namespace) -> VoiceSettings | None:
    """The chat's voice from its flags: ``--wav`` or ``--play`` alone imply ``--voice``;
    ``--voice`` alone writes WAV files (``DEFAULT_WAV``).

    ``--voice`` takes an optional NAME, so ``chat --voice ws://host/ws`` would read
    the URL as a voice: a "name" with ``://`` in it is taken back as the URL.
    """
    if isinstance(args.voice, str) and "://" in args.voice and args.url == DEFAULT_URL:
        args.url, args.voice = args.voice, True
    if args.voice is None and args.wav is None and args.play is None:
        return None
    wav = args.wav if args.wav is not None or args.play is not None else DEFAULT_WAV
    return VoiceSettings(
        voice=args.voice if args.voice is not None else True,
        wav=wav,
        play=args.play,
        audio_pace=args.audio_pace,
    )


def describe_voice(client: AgentClient, voice: VoiceSettings) -> str:
    """The note that says how replies will be spoken, and whether the server can."""
    if not client.voices:
        return "the server offers no voices: replies will not be spoken"
    name = client.default_voice if voice.voice is True else voice.voice
    where = [f"to {voice.wav}"] if voice.wav is not None else []
    if voice.play is not None:
        where.append(f"through `{voice.play}`")
    return f"voice {name} ({client.synthesizer or 'unknown synthesizer'}), " + " and ".join(where)


def describe_heard(done: DoneInfo) -> str | None:
    """One line about what the user heard of a spoken reply, from its server DONE,
    e.g. ``heard 1.20 s of 3.40 s: "Lorem ipsum dolor"``; ``None`` if not spoken."""
    if done.heard_ms is None or done.audio_ms is None:
        return None
    text = (done.heard_text or "").strip()
    words = f': "{text}"' if text else ": nothing"
    return f"heard {done.heard_ms / 1000:.2f} s of {done.audio_ms / 1000:.2f} s{words}"
