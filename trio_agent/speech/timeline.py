"""The speech stage's pure parts: phrases, words on the audio timeline, what was heard.

The DONE of a spoken reply (``audio_ms``, ``heard_ms``, ``heard_text``) is computed
from the timeline alone; docs/voice.md defines each field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from trio_agent.protocol.messages import ErrorCode

#: Where a phrase may end: sentence or clause punctuation (and closing quotes or
#: brackets after it) followed by white space.
_PHRASE_END: Final = re.compile(r"[.!?;:,\u2026]+[\"')\]\u201d\u2019]*(?=\s)")
#: A word as the speech stage cuts it: the white space before it, then the word.
_WORD: Final = re.compile(r"\s*\S+")
#: The white space-separated words of a text that are complete (followed by space).
_COMPLETE_WORD: Final = re.compile(r"\s*\S+(?=\s)")

#: A phrase that has not ended after this many words is cut anyway, so a reply
#: without punctuation still starts speaking early.
MAX_PHRASE_WORDS: Final = 12
#: Nor may a phrase grow past this many characters (one very long "word").
MAX_PHRASE_CHARS: Final = 400


def split_words(phrase: str) -> list[str]:
    """The words of ``phrase``, each with the white space before it.

    ``"".join(split_words(p)) == p`` for a phrase without trailing white space,
    which is what :class:`PhraseCutter` hands out.
    """
    return _WORD.findall(phrase)


class PhraseCutter:
    """Cuts text, as it streams in, into phrases worth synthesising one at a time.

    A phrase ends after punctuation followed by white space (``"Hello, "``), or
    after :data:`MAX_PHRASE_WORDS` complete words, or at :data:`MAX_PHRASE_CHARS`
    characters. White space after a phrase starts the next one, so the phrases
    joined give back the text (minus white space at its very end).
    """

    def __init__(
        self, *, max_words: int = MAX_PHRASE_WORDS, max_chars: int = MAX_PHRASE_CHARS
    ) -> None:
        self._buffer = ""
        self._max_words = max_words
        self._max_chars = max_chars

    def feed(self, delta: str) -> list[str]:
        """Add ``delta``; return the phrases it completed, in order."""
        self._buffer += delta
        phrases = []
        while (phrase := self._next_phrase()) is not None:
            phrases.append(phrase)
        return phrases

    def flush(self) -> str | None:
        """The text left over at the end of the reply, if it holds a word."""
        rest, self._buffer = self._buffer.rstrip(), ""
        return rest if rest.strip() else None

    def _next_phrase(self) -> str | None:
        buffer = self._buffer
        end = None
        if (match := _PHRASE_END.search(buffer)) is not None:
            end = match.end()
        for words, word in enumerate(_COMPLETE_WORD.finditer(buffer), start=1):
            if end is not None and word.end() >= end:
                break
            if words >= self._max_words:
                end = word.end()
                break
        if end is None and len(buffer) > self._max_chars:
            end = self._max_chars
        if end is None or not buffer[:end].strip():
            return None
        self._buffer = buffer[end:]
        return buffer[:end]


@dataclass(frozen=True, slots=True)
class PhraseAudio:
    """One synthesised phrase: its samples, and where each of its words lies.

    ``samples`` is ``pcm_s16le`` mono at the synthesiser's rate; ``word_spans``
    holds one ``(start, end)`` pair of sample offsets per word of the phrase,
    non-decreasing, within ``[0, n_samples]``.
    """

    samples: bytes
    word_spans: tuple[tuple[int, int], ...]

    @property
    def n_samples(self) -> int:
        return len(self.samples) // 2


@dataclass(frozen=True, slots=True)
class SpokenWord:
    """A word of a spoken reply: its STREAM delta and its audio, in reply milliseconds."""

    delta: str
    start_ms: float
    end_ms: float


@dataclass
class SpeechTimeline:
    """The audio of one spoken request: what was queued, what was written, what was heard.

    ``words[i]`` is the word of STREAM frame ``seq == i`` (a spoken reply's
    STREAM frames are its words), so the first ``frames_written`` of them reached
    the client.
    """

    sample_rate: int
    #: Samples of every phrase synthesised so far: where the next phrase starts.
    samples_queued: int = 0
    #: Samples of the AUDIO chunks written to the socket.
    samples_written: int = 0
    #: AUDIO chunks queued: the next chunk's ``seq``.
    chunks_queued: int = 0
    words: list[SpokenWord] = field(default_factory=list)
    #: The client's playback position, from an INTERRUPT that named this request.
    played_ms: float | None = None

    def ms(self, samples: int) -> float:
        """Milliseconds of ``samples`` at this timeline's rate: exact where it can be."""
        return samples * 1000 / self.sample_rate

    @property
    def audio_ms(self) -> float:
        return self.ms(self.samples_written)

    @property
    def heard_ms(self) -> float:
        audio_ms = self.audio_ms
        return audio_ms if self.played_ms is None else min(self.played_ms, audio_ms)

    def heard_text(self, frames_written: int) -> str:
        """The words (of the first ``frames_written``) whose audio ends within ``heard_ms``."""
        heard_ms = self.heard_ms
        heard = []
        for word in self.words[:frames_written]:
            if word.end_ms > heard_ms:
                break
            heard.append(word.delta)
        return "".join(heard)

    def done_fields(self, frames_written: int) -> dict[str, Any]:
        """The fields a spoken reply adds to its DONE."""
        return {
            "audio_ms": self.audio_ms,
            "heard_ms": self.heard_ms,
            "heard_text": self.heard_text(frames_written),
        }


def pad_to_chunks(samples: bytes, chunk_samples: int) -> bytes:
    """``samples`` (s16) followed by silence up to a whole number of chunks."""
    short = -(len(samples) // 2) % chunk_samples
    return samples + bytes(2 * short) if short else samples


def chunk_bounds(n_samples: int, chunk_samples: int) -> list[tuple[int, int]]:
    """``[start, end)`` sample offsets of the chunks of ``n_samples``: all
    ``chunk_samples`` long but the last, which may be shorter."""
    return [(a, min(a + chunk_samples, n_samples)) for a in range(0, n_samples, chunk_samples)]


# --------------------------------------------------------------------------- options


class SpeechOptionError(Exception):
    """A REQUEST whose speech options cannot be served: the ERROR code and message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class SpeechOptions:
    """What a REQUEST asked of the speech stage."""

    voice: str
    #: 1: real time; 2: twice as fast; 0: as fast as backpressure allows.
    pace: float


def speech_options(
    options: Mapping[str, Any], *, voices: Sequence[str], default_voice: str | None
) -> SpeechOptions | None:
    """Read ``options.voice`` and ``options.audio_pace``; ``None``: the reply is text only.

    Raises :class:`SpeechOptionError`: ``INVALID_MESSAGE`` for a value of the wrong
    type, ``UNKNOWN_VOICE`` for a voice this server does not have (or any voice
    when speech is off).
    """
    voice = options.get("voice")
    if voice is None or voice is False:
        return None
    if voice is not True and not isinstance(voice, str):
        raise SpeechOptionError(
            ErrorCode.INVALID_MESSAGE, "options.voice must be a voice name or true"
        )
    if default_voice is None or not voices:
        raise SpeechOptionError(ErrorCode.UNKNOWN_VOICE, "speech is not enabled on this server")
    if voice is True:
        voice = default_voice
    elif voice not in voices:
        raise SpeechOptionError(
            ErrorCode.UNKNOWN_VOICE,
            f"voice {voice[:64]!r} is not available here (see SESSION.payload.voices)",
        )
    pace = options.get("audio_pace", 1)
    if (
        isinstance(pace, bool)
        or not isinstance(pace, int | float)
        or not math.isfinite(pace)
        or pace < 0
    ):
        raise SpeechOptionError(
            ErrorCode.INVALID_MESSAGE, "options.audio_pace must be a number >= 0"
        )
    return SpeechOptions(voice=voice, pace=float(pace))
