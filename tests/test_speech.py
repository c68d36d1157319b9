"""The speech stage's pure parts: phrases, word spans, the timeline and its truncation."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_agent.protocol.messages import ErrorCode
from trio_agent.speech.synthesizers import (
    BuiltinSynthesizer,
    SynthesisError,
    _wav_samples,
    estimate_word_spans,
)
from trio_agent.speech.timeline import (
    MAX_PHRASE_WORDS,
    PhraseCutter,
    SpeechOptionError,
    SpeechOptions,
    SpeechTimeline,
    SpokenWord,
    chunk_bounds,
    pad_to_chunks,
    speech_options,
    split_words,
)


def cut(deltas: list[str]) -> list[str]:
    cutter = PhraseCutter()
    phrases = [p for d in deltas for p in cutter.feed(d)]
    rest = cutter.flush()
    return [*phrases, rest] if rest is not None else phrases


def test_phrases_end_at_punctuation_followed_by_space():
    assert cut(["Hello, wor", "ld. How are", " you? Fine"]) == [
        "Hello,",
        " world.",
        " How are you?",
        " Fine",
    ]


def test_punctuation_inside_a_word_does_not_end_a_phrase():
    assert cut(["It costs 3.50 dollars, e.g. here"]) == ["It costs 3.50 dollars,", " e.g.", " here"]


def test_a_long_phrase_without_punctuation_is_cut_by_words():
    phrases = cut([" ".join(f"w{i}" for i in range(30))])
    assert [len(split_words(p)) for p in phrases] == [MAX_PHRASE_WORDS, MAX_PHRASE_WORDS, 6]


def test_nothing_is_cut_until_a_phrase_is_complete():
    cutter = PhraseCutter()
    assert cutter.feed("Hello,") == []  # the comma may be followed by more
    assert cutter.feed(" ") == ["Hello,"]
    assert cutter.flush() is None  # white space alone is no phrase


@given(st.lists(st.text(alphabet="ab ,.!\n", max_size=30), max_size=20))
def test_phrases_give_back_the_text_and_words_give_back_the_phrases(deltas):
    phrases = cut(deltas)
    assert "".join(phrases) == "".join(deltas).rstrip()
    for phrase in phrases:
        assert phrase.strip()
        assert "".join(split_words(phrase)) == phrase
        assert len(split_words(phrase)) <= MAX_PHRASE_WORDS


def test_builtin_synthesis_is_deterministic_with_exact_word_spans():
    synth = BuiltinSynthesizer()
    audio = synth.render(["hello", " there,", " ..."], "tone")
    assert audio.word_spans == ((0, 3840), (4480, 8320), (8960, 8960))
    # 2 + 2 syllables of 120 ms, a 40 ms gap after each word that has a sound, and
    # the 200 ms pause of a sentence end ("..."), which is a word with no sound.
    assert audio.n_samples == 16 * (240 + 40 + 240 + 40 + 200)
    assert synth.render(["hello", " there,", " ..."], "tone") == audio
    assert synth.render(["hello"], "tone-low").samples != synth.render(["hello"], "tone").samples


def test_estimated_spans_share_the_phrase_by_letters():
    assert estimate_word_spans(["ab", " c", " ..."], 100) == ((0, 50), (50, 75), (75, 100))


def wav(rate: int = 22050, channels: int = 1, bits: int = 16, data: bytes = b"\x01\x00") -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2, 2, bits)
    return (
        b"RIFF\xff\xff\xff\x7fWAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data\xff\xff\xff\x7f"
        + data
    )


def test_espeak_wav_output_is_read_past_its_placeholder_sizes():
    assert _wav_samples(wav(data=b"\x01\x00\x02\x00\x03"), 22050) == b"\x01\x00\x02\x00"
    for bad in (b"", b"RIFF", wav(rate=16000), wav(channels=2), wav(bits=8), wav()[:36]):
        with pytest.raises(SynthesisError):
            _wav_samples(bad, 22050)


def test_chunks_and_padding():
    assert chunk_bounds(700, 320) == [(0, 320), (320, 640), (640, 700)]
    assert len(pad_to_chunks(b"\x01\x00" * 700, 320)) == 2 * 960
    assert pad_to_chunks(b"\x01\x00" * 640, 320) == b"\x01\x00" * 640


def timeline(played_ms=None, written=16 * 380) -> SpeechTimeline:
    t = SpeechTimeline(sample_rate=16000, samples_written=written, played_ms=played_ms)
    t.words = [
        SpokenWord("hello", 0, 240),
        SpokenWord(" there,", 280, 520),
        SpokenWord(" how", 560, 680),
    ]
    return t


@pytest.mark.parametrize(
    ("played_ms", "heard_ms", "heard_text"),
    [(None, 380, "hello"), (239.9, 239.9, ""), (240, 240, "hello"), (9999, 380, "hello")],
)
def test_heard_is_played_capped_by_written_and_only_whole_words(played_ms, heard_ms, heard_text):
    t = timeline(played_ms)
    assert t.audio_ms == 380.0
    assert t.done_fields(frames_written=3) == {
        "audio_ms": 380.0,
        "heard_ms": heard_ms,
        "heard_text": heard_text,
    }


def test_heard_text_only_counts_words_whose_stream_frame_was_written():
    t = timeline(written=16 * 1000)
    assert t.heard_text(frames_written=3) == "hello there, how"
    assert t.heard_text(frames_written=1) == "hello"


VOICES = {"voices": ["a", "b"], "default_voice": "a"}


def test_speech_options():
    assert speech_options({}, **VOICES) is None
    assert speech_options({"voice": False}, **VOICES) is None
    assert speech_options({"voice": True}, **VOICES) == SpeechOptions("a", 1.0)
    assert speech_options({"voice": "b", "audio_pace": 0}, **VOICES) == SpeechOptions("b", 0.0)


@pytest.mark.parametrize(
    ("options", "settings", "code"),
    [
        ({"voice": "c"}, VOICES, ErrorCode.UNKNOWN_VOICE),
        ({"voice": True}, {"voices": [], "default_voice": None}, ErrorCode.UNKNOWN_VOICE),
        ({"voice": 1}, VOICES, ErrorCode.INVALID_MESSAGE),
        ({"voice": True, "audio_pace": float("inf")}, VOICES, ErrorCode.INVALID_MESSAGE),
        ({"voice": True, "audio_pace": None}, VOICES, ErrorCode.INVALID_MESSAGE),
    ],
)
def test_bad_speech_options(options, settings, code):
    with pytest.raises(SpeechOptionError) as info:
        speech_options(options, **settings)
    assert info.value.code == code
