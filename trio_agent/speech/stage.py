"""The speech stage: an agent's text, spoken into the request's stream lane.

Everything happens inside the agent's own ``await stream.send(...)``, in the
request's cancel scope: an INTERRUPT stops it where it stands (docs/voice.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from trio_agent.agents import pacing
from trio_agent.speech.timeline import (
    PhraseCutter,
    SpeechOptions,
    SpeechTimeline,
    chunk_bounds,
    pad_to_chunks,
    split_words,
)

if TYPE_CHECKING:
    from trio_agent.agents.api import RequestOutcome, ResponseStream
    from trio_agent.speech.synthesizers import Synthesizer


class SpeechSink(Protocol):
    """Where the speech stage queues what it makes: the session's stream lane.

    Both methods wait for room (backpressure), and an interrupt lands in that
    wait. Unlike an agent's ``stream.send`` they are *not* schedule points when
    there is room: the speaker checkpoints once per group of chunks (its pacing
    wait), so that a group is queued whole and leaves in one write. They are
    cancellation points all the same: a request whose scope was cancelled (its
    deadline, the session ending) queues nothing more. Both raise
    :class:`trio.ClosedResourceError` for a request that has ended, and deliver a
    pending cancellation first.
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
        lead_ms: float = 0.0,
    ) -> None:
        self._sink = sink
        self._synthesizer = synthesizer
        self._voice = options.voice
        self._pace = options.pace
        self._timeline = timeline
        self._chunk_samples = max(1, round(synthesizer.sample_rate * chunk_ms / 1000))
        #: Paced, chunks that start within this much of now leave together.
        self._lead_s = lead_ms / 1000
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
        bounds = chunk_bounds(len(samples) // 2, self._chunk_samples)
        said = 0
        i = 0
        while i < len(bounds):
            # The checkpoint of this group of chunks: the wait for its first
            # chunk's time (a plain checkpoint when the pace is off). The group is
            # every chunk that starts before the horizon; it is queued with no
            # schedule point in between (the sink waits only for room), so its
            # frames leave in one write.
            horizon = await self._wait_for_time_of(offset + bounds[i][0])
            while True:
                start, end = bounds[i]
                while said < len(words) and spans[said][0] < end:
                    await self._send_word(words[said], offset, spans[said])
                    said += 1
                await self._sink.send_audio(
                    samples[2 * start : 2 * end], start_sample=offset + start
                )
                i += 1
                if (
                    i == len(bounds)
                    or horizon is None
                    or self._due(offset + bounds[i][0]) > horizon
                ):
                    break
        while said < len(words):  # words with no sound of their own, at the very end
            await self._send_word(words[said], offset, spans[said])
            said += 1
        timeline.samples_queued = offset + len(samples) // 2

    async def _send_word(self, word: str, offset: int, span: tuple[int, int]) -> None:
        ms = self._timeline.ms
        await self._sink.send_word(word, start_ms=ms(offset + span[0]), end_ms=ms(offset + span[1]))

    def _due(self, sample: int) -> float:
        """When the chunk starting at ``sample`` is due (real time scaled by the pace)."""
        assert self._started_at is not None
        return self._started_at + self._timeline.ms(sample) / 1000 / self._pace

    async def _wait_for_time_of(self, sample: int) -> float | None:
        """Sleep until the chunk starting at ``sample`` is due; return the horizon:
        chunks due before it may be sent now. Always a checkpoint.

        Paced, the sleep is :func:`trio_agent.agents.pacing.sleep_until` (up to a
        millisecond late, sharing its timer with the other speakers due in the same
        millisecond) and the horizon is ``lead_ms`` from now. Unpaced, it is a plain
        checkpoint and there is no horizon (``None``): one chunk per checkpoint.
        """
        if not self._pace:
            await trio.lowlevel.checkpoint()
            return None
        if self._started_at is None:
            self._started_at = trio.current_time()
        due = self._due(sample)
        if due > trio.current_time():
            await pacing.sleep_until(due)
        else:
            await trio.lowlevel.checkpoint()
        # The tolerance keeps a chunk exactly one lead away in the group despite
        # floating point (20 ms from a chunk due at ``now``).
        return trio.current_time() + self._lead_s + 1e-9


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
