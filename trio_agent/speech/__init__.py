"""Spoken responses: text in, paced AUDIO frames out, silenced by an INTERRUPT.

``timeline`` is pure (phrases, where each word falls in the audio, what was heard);
``stage`` is the Trio stage between an agent and the stream lane;
``synthesizers`` turns a phrase into samples (espeak-ng or the built-in one).
``docs/voice.md`` explains the design. The modules are internal.
"""

from trio_agent.speech.stage import (
    Speaker,
    SpokenResponseStream,
)
from trio_agent.speech.synthesizers import (
    BuiltinSynthesizer,
    EspeakSynthesizer,
    SynthesisError,
    Synthesizer,
    select_synthesizer,
)
from trio_agent.speech.timeline import (
    SpeechOptionError,
    SpeechOptions,
    SpeechTimeline,
    speech_options,
    split_words,
)

__all__ = [
    "BuiltinSynthesizer",
    "EspeakSynthesizer",
    "Speaker",
    "SpeechOptionError",
    "SpeechOptions",
    "SpeechTimeline",
    "SpokenResponseStream",
    "SynthesisError",
    "Synthesizer",
    "select_synthesizer",
    "speech_options",
    "split_words",
]
