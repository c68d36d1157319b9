"""The speech stage: an agent's text, spoken into the request's stream lane.

A REQUEST with ``options.voice`` runs its agent (any text agent) against a
:class:`SpokenResponseStream` instead of the plain stream::

    agent --send(delta)--> PhraseCutter --phrase--> synthesiser --samples, word spans-->
      20 ms chunks --paced--> stream lane (budgeted in ms) --> writer --> socket

For each chunk, in the request task: wait for the chunk's time (the reply's
clock starts at its first chunk; ``options.audio_pace`` scales it, 0 turns it
off), queue the STREAM frame of every word whose audio starts in the chunk
(with that ``start_ms``), then queue the chunk. Both go through the stream lane,
one request's frames in order, so a word's caption is written before its sound.

Everything happens inside the agent's own ``await stream.send(...)``: the
synthesis of a phrase, the pacing and the waits for room are all checkpoints of
the request's task, in the request's cancel scope. An INTERRUPT cancels that
scope, so the synthesiser's subprocess is killed where it stands
(:mod:`trio_agent.synthesis`), the pacing sleep ends, and the chunks already
queued are discarded with the request's STREAM frames. There is no task of its
own to stop.

One phrase is synthesised at a time, when the agent's text completes it; the
agent waits meanwhile (that is the backpressure). A phrase's synthesis therefore
starts when the previous phrase's last chunk is queued: with espeak-ng (a few
tens of ms per phrase) the first chunk of a phrase can be that much late.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .speech import (
    PhraseCutter,
    SpeechOptions,
    SpeechTimeline,
    chunk_bounds,
    pad_to_chunks,
    split_words,
)

if TYPE_CHECKING:
    from .agents import RequestOutcome, ResponseStream
    from .synthesis import Synthesizer


class SpeechSink(Protocol):
    """Where the speech stage queues what it makes: the session's stream lane.

    Both methods wait for room (backpressure) and are checkpoints, so an
    interrupt lands in them; both raise :class:`trio.ClosedResourceError` for a
    request that has ended.
    """

    async def send_word(self, delta: str, *, start_ms: float, end_ms: float) -> None:
        """Queue a word's STREAM frame, carrying its audio's ``start_ms``."""
        ...

    async def send_audio(self, samples: bytes, *, start_sample: int) -> None:
        """Queue one AUDIO chunk whose first sample is ``start_sample`` of the reply."""
        ...


class Speaker:
    """Speaks phrases of one reply: synthesis, chunking, pacing, queueing."""

    def __init__(
        self,
        sink: SpeechSink,
        synthesizer: Synthesizer,
        options: SpeechOptions,
        timeline: SpeechTimeline,
        *,
        chunk_ms: float,
    ) -> None:
        self._sink = sink
        self._synthesizer = synthesizer
        self._voice = options.voice
        self._pace = options.pace
        self._timeline = timeline
        self._chunk_samples = max(1, round(synthesizer.sample_rate * chunk_ms / 1000))
        #: ``trio.current_time()`` of the reply's first chunk: the pacing clock's origin.
        self._started_at: float | None = None

    async def speak(self, phrase: str) -> None:
        words = split_words(phrase)
        if not words:
            await trio.lowlevel.checkpoint()
            return
        audio = await self._synthesizer.synthesize(words, self._voice)
        timeline = self._timeline
        offset = timeline.samples_queued
        spans = audio.word_spans
        # Silence up to a whole number of chunks: every chunk has the same length,
        # so start_ms and duration_ms stay whole where the chunk is (20 ms at
        # 16 kHz or 22.05 kHz), and their sums exact.
        samples = pad_to_chunks(audio.samples, self._chunk_samples)
        n_samples = len(samples) // 2
        said = 0
        for start, end in chunk_bounds(n_samples, self._chunk_samples):
            await self._wait_for_time_of(offset + start)
            while said < len(words) and spans[said][0] < end:
                await self._send_word(words[said], offset, spans[said])
                said += 1
            await self._sink.send_audio(samples[2 * start : 2 * end], start_sample=offset + start)
        while said < len(words):  # words with no sound of their own, at the very end
            await self._send_word(words[said], offset, spans[said])
            said += 1
        timeline.samples_queued = offset + n_samples

    async def _send_word(self, word: str, offset: int, span: tuple[int, int]) -> None:
        ms = self._timeline.ms
        await self._sink.send_word(word, start_ms=ms(offset + span[0]), end_ms=ms(offset + span[1]))

    async def _wait_for_time_of(self, sample: int) -> None:
        """Sleep until the chunk starting at ``sample`` is due (real time scaled by the pace)."""
        if not self._pace:
            return
        now = trio.current_time()
        if self._started_at is None:
            self._started_at = now
        due = self._started_at + self._timeline.ms(sample) / 1000 / self._pace
        if due > now:
            await trio.sleep_until(due)


class SpokenResponseStream:
    """The :class:`~trio_agent.agents.ResponseStream` an agent writes to when its
    reply is spoken: text in, phrases spoken. :meth:`finish` speaks the rest once
    the agent returns. Everything but :meth:`send` is the plain stream's."""

    def __init__(self, inner: ResponseStream, speaker: Speaker) -> None:
        self._inner = inner
        self._speaker = speaker
        self._cutter = PhraseCutter()

    @property
    def request_id(self) -> str:
        return self._inner.request_id

    async def send(self, delta: str) -> None:
        if not isinstance(delta, str):
            raise TypeError(f"a delta must be a str, not {type(delta).__name__}")
        phrases = self._cutter.feed(delta)
        if not phrases:
            await trio.lowlevel.checkpoint()  # every send is an interrupt point
        for phrase in phrases:
            await self._speaker.speak(phrase)

    async def finish(self) -> None:
        """Speak what is left of the reply (text after its last phrase end)."""
        rest = self._cutter.flush()
        if rest is not None:
            await self._speaker.speak(rest)

    def add_done_fields(self, **fields: Any) -> None:
        self._inner.add_done_fields(**fields)

    def defer_done(self) -> None:
        self._inner.defer_done()

    def on_done(self, callback: Callable[[RequestOutcome], None]) -> None:
        self._inner.on_done(callback)
