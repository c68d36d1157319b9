"""Synthesisers: text of one phrase in, ``pcm_s16le`` mono samples and word spans out.

``espeak-ng`` (a subprocess killed on cancellation) or the built-in tones,
chosen by ``--speech`` (docs/voice.md).
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import struct
import subprocess
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol

import trio

from trio_agent.speech.timeline import PhraseAudio

SynthesizerName = Literal["espeak-ng", "builtin"]

#: How long a killed synthesiser may take to be reaped before the request gives up
#: waiting (it was sent SIGKILL; the kernel reaps it, we only collect the status).
REAP_TIMEOUT_S: Final = 1.0


class SynthesisError(Exception):
    """A synthesiser failed on a phrase (the request ends ``failed``)."""


class Synthesizer(Protocol):
    """What the speech stage needs of a synthesiser."""

    #: ``SESSION.synthesizer``.
    name: SynthesizerName
    #: Samples per second of everything it returns (``pcm_s16le``, mono).
    sample_rate: int
    voices: list[str]
    default_voice: str

    async def synthesize(self, words: Sequence[str], voice: str) -> PhraseAudio:
        """Synthesise one phrase given as its words (see :func:`~trio_agent.speech.timeline.split_words`).

        Returns one span per word. Cancellable; leaves nothing running when cancelled.
        """
        ...


# --------------------------------------------------------------------------- built-in


_VOWELS: Final = re.compile(r"[aeiouyàáâäèéêëìíîïòóôöùúûü]+", re.IGNORECASE)
_SENTENCE_END: Final = re.compile(r"[.!?\u2026][\"')\]\u201d\u2019]*$")
_CLAUSE_END: Final = re.compile(r"[,;:][\"')\]\u201d\u2019]*$")


class BuiltinSynthesizer:
    """Tones shaped per syllable, at 16 kHz: speech's timing without a speech engine.

    Voices differ in pitch. Timing: :attr:`SYLLABLE_MS` per syllable (vowel
    groups; at least one for a word with a letter or digit, none for punctuation
    alone), :attr:`WORD_GAP_MS` of silence after each word, and a pause after the
    phrase (:attr:`SENTENCE_PAUSE_MS` after ``.!?``, :attr:`CLAUSE_PAUSE_MS` after
    ``,;:``). A word's span is its syllables; the silence after it belongs to no word.
    """

    name: SynthesizerName = "builtin"
    sample_rate: int = 16_000
    SYLLABLE_MS: Final = 120
    WORD_GAP_MS: Final = 40
    CLAUSE_PAUSE_MS: Final = 80
    SENTENCE_PAUSE_MS: Final = 200
    #: Base pitch (Hz) of each voice.
    VOICES: Final = {"tone": 220.0, "tone-low": 130.0}

    def __init__(self) -> None:
        self.voices: list[str] = list(self.VOICES)
        self.default_voice: str = "tone"

    @staticmethod
    def syllables(word: str) -> int:
        """How many syllables the built-in synthesiser gives ``word``."""
        if not any(c.isalnum() for c in word):
            return 0
        return max(1, len(_VOWELS.findall(word)))

    async def synthesize(self, words: Sequence[str], voice: str) -> PhraseAudio:
        await trio.lowlevel.checkpoint()
        return self.render(words, voice)

    def render(self, words: Sequence[str], voice: str) -> PhraseAudio:
        """The phrase's audio, computed (no checkpoint: it only joins bytes)."""
        tones = _syllable_tones(self.VOICES[voice], self.sample_rate, self.SYLLABLE_MS)
        gap = _silence(self.sample_rate * self.WORD_GAP_MS // 1000)
        syllable = self.sample_rate * self.SYLLABLE_MS // 1000
        parts: list[bytes] = []
        spans: list[tuple[int, int]] = []
        at = 0
        for word in words:
            count = self.syllables(word)
            key = sum(map(ord, word))
            for i in range(count):
                parts.append(tones[(key + i) % len(tones)])
            spans.append((at, at + count * syllable))
            at += count * syllable
            if count:
                parts.append(gap)
                at += len(gap) // 2
        last = words[-1] if words else ""
        pause_ms = (
            self.SENTENCE_PAUSE_MS
            if _SENTENCE_END.search(last)
            else self.CLAUSE_PAUSE_MS
            if _CLAUSE_END.search(last)
            else 0
        )
        if pause_ms:
            parts.append(_silence(self.sample_rate * pause_ms // 1000))
        return PhraseAudio(b"".join(parts), tuple(spans))


@functools.cache
def _silence(samples: int) -> bytes:
    return bytes(2 * samples)


@functools.cache
def _syllable_tones(base_hz: float, rate: int, syllable_ms: int) -> tuple[bytes, ...]:
    """Five tones a whole step apart, each one syllable long, with a 15 ms attack and a
    decay over its second half: computed once per voice."""
    n = rate * syllable_ms // 1000
    attack = rate * 15 // 1000
    tones = []
    for step in range(5):
        hz = base_hz * 2 ** (2 * step / 12)
        samples = array("h")
        for i in range(n):
            envelope = min(1.0, i / attack) * min(1.0, 2 * (n - i) / n)
            value = math.sin(2 * math.pi * hz * i / rate) + 0.3 * math.sin(
                4 * math.pi * hz * i / rate
            )
            samples.append(int(9000 * envelope * value))
        if sys.byteorder == "big":
            samples.byteswap()
        tones.append(samples.tobytes())
    return tuple(tones)


# --------------------------------------------------------------------------- espeak-ng


class EspeakSynthesizer:
    """``espeak-ng`` as a subprocess per phrase (22050 Hz).

    :param executable: the program to run (a path, or a name looked up on PATH).
    :param voices: the voice names to offer; :meth:`installed` asks the program.
    :param on_process: called with each process as it starts (tests use it to see
        that an interrupted request leaves no process behind).
    """

    name: SynthesizerName = "espeak-ng"
    sample_rate: int = 22_050

    def __init__(
        self,
        executable: str = "espeak-ng",
        *,
        voices: Sequence[str] = ("en-us",),
        default_voice: str | None = None,
        on_process: Callable[[trio.Process], None] | None = None,
    ) -> None:
        if not voices:
            raise ValueError("espeak-ng needs at least one voice")
        self.executable = executable
        self.voices: list[str] = list(voices)
        self.default_voice: str = default_voice or (
            "en-us" if "en-us" in self.voices else self.voices[0]
        )
        self.on_process = on_process

    @classmethod
    def installed(cls, executable: str = "espeak-ng") -> EspeakSynthesizer | None:
        """The espeak-ng on PATH with the voices it has, or ``None`` if there is none.

        Runs ``espeak-ng --voices`` once per process (a blocking call of a few
        milliseconds, made when a server is built, before it serves).
        """
        path = shutil.which(executable)
        if path is None:
            return None
        voices = _espeak_voices(path)
        return cls(path, voices=voices) if voices else None

    async def synthesize(self, words: Sequence[str], voice: str) -> PhraseAudio:
        text = "".join(words).strip()
        process = await trio.lowlevel.open_process(
            [self.executable, "--stdout", "-b", "1", "-v", voice, "--stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        if self.on_process is not None:
            self.on_process(process)
        try:
            assert process.stdin is not None
            assert process.stdout is not None
            # A phrase is at most a few hundred characters: far less than a pipe
            # holds, so writing it all before reading cannot deadlock.
            await process.stdin.send_all(text.encode("utf-8") + b"\n")
            await process.stdin.aclose()
            received = []
            while data := await process.stdout.receive_some(65536):
                received.append(data)
            status = await process.wait()
        finally:
            await _reap(process)
        if status != 0:
            raise SynthesisError(f"espeak-ng exited with status {status}")
        samples = _wav_samples(b"".join(received), self.sample_rate)
        return PhraseAudio(samples, estimate_word_spans(words, len(samples) // 2))


async def _reap(process: trio.Process) -> None:
    """Kill ``process`` if it still runs, and collect its exit status: bounded and
    shielded, so a cancelled request never leaves a zombie or a running synthesiser."""
    with trio.move_on_after(REAP_TIMEOUT_S, shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                await pipe.aclose()


def estimate_word_spans(words: Sequence[str], n_samples: int) -> tuple[tuple[int, int], ...]:
    """Share ``n_samples`` between ``words`` in proportion to their letters and digits
    (at least one each): espeak-ng's word boundaries, estimated."""
    weights = [max(1, sum(c.isalnum() for c in word)) for word in words]
    total = sum(weights)
    spans = []
    done = 0
    for weight in weights:
        start = n_samples * done // total
        done += weight
        spans.append((start, n_samples * done // total))
    return tuple(spans)


def _wav_samples(wav: bytes, expected_rate: int) -> bytes:
    """The sample bytes of espeak-ng's WAV output (16-bit mono PCM at ``expected_rate``).

    espeak-ng writes to a pipe, so its chunk sizes are placeholders: the data chunk
    is everything after its header.
    """
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise SynthesisError("espeak-ng did not write a WAV file")
    at = 12
    fmt_seen = False
    while at + 8 <= len(wav):
        chunk_id, size = wav[at : at + 4], struct.unpack_from("<I", wav, at + 4)[0]
        body = at + 8
        if chunk_id == b"fmt ":
            tag, channels, rate = struct.unpack_from("<HHI", wav, body)
            bits = struct.unpack_from("<H", wav, body + 14)[0]
            if (tag, channels, rate, bits) != (1, 1, expected_rate, 16):
                raise SynthesisError(
                    f"espeak-ng wrote {bits}-bit audio, {channels} channel(s) at {rate} Hz, "
                    f"format {tag}; expected 16-bit mono PCM at {expected_rate} Hz"
                )
            fmt_seen = True
        elif chunk_id == b"data":
            if not fmt_seen:
                break
            samples = wav[body:]
            return samples[: len(samples) // 2 * 2]
        at = body + size + (size & 1)
    raise SynthesisError("espeak-ng's WAV output has no audio data")


@functools.cache
def _espeak_voices(path: str) -> tuple[str, ...]:
    try:
        listing = subprocess.run(
            [path, "--voices"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    voices = []
    for line in listing.splitlines()[1:]:
        columns = line.split()
        if len(columns) >= 2 and columns[1] not in voices:
            voices.append(columns[1])
    return tuple(voices)


def select_synthesizer(mode: str) -> Synthesizer | None:
    """The synthesiser ``--speech`` asks for: ``auto``, ``espeak-ng``, ``builtin`` or ``off``.

    Raises ``ValueError`` when ``espeak-ng`` is asked for and not installed.
    """
    if mode == "off":
        return None
    if mode == "builtin":
        return BuiltinSynthesizer()
    espeak = EspeakSynthesizer.installed()
    if espeak is not None:
        return espeak
    if mode == "espeak-ng":
        raise ValueError("--speech espeak-ng: espeak-ng is not installed (Debian: espeak-ng)")
    return BuiltinSynthesizer()
