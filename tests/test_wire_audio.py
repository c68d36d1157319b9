"""``trio_agent.testing.wire`` and spoken replies (protocol v1.1): AUDIO binary frames are
decoded into :class:`~trio_agent.testing.wire.AudioFrame` values, next to the text frames.

The server speaks with the built-in synthesiser (16 kHz, deterministic), over a
real loopback socket, with ``audio_pace: 0`` so nothing waits on a clock.
"""

from __future__ import annotations

import pytest
import trio
from fake_server import start_fake, tone, voice_session_payload
from trio_websocket import wrap_client_stream

from trio_agent import AgentServer
from trio_agent import agents as builtin
from trio_agent.protocol.audio import AudioHeader, encode_audio_frame
from trio_agent.testing.wire import AudioFrame, Frame, WireConnection, open_wire, summarize

SPOKEN = {"voice": True, "audio_pace": 0}
TEXT = "hello there, how are you"
SAMPLE_RATE = 16000  # the built-in synthesiser's


async def speaking_server(start_server) -> AgentServer:
    return await start_server({"echo": builtin.echo}, speech="builtin")


def check_audio(audio: list[AudioFrame], rid: str, done: Frame) -> None:
    """The chunks of one reply: in order from 0, contiguous, each header true to its
    samples, and together exactly the ``audio_ms`` the DONE reports."""
    assert audio, "no AUDIO frame"
    assert [a.seq for a in audio] == list(range(len(audio)))
    start = 0.0
    for chunk in audio:
        assert isinstance(chunk.header, AudioHeader)
        assert chunk.request_id == rid
        assert (chunk.header.format, chunk.header.sample_rate, chunk.header.channels) == (
            "pcm_s16le",
            SAMPLE_RATE,
            1,
        )
        assert chunk.start_ms == start
        assert len(chunk.samples) == chunk.duration_ms * SAMPLE_RATE / 1000 * 2
        start += chunk.duration_ms
    assert done["payload"]["audio_ms"] == start
    assert any(chunk.samples.strip(b"\0") for chunk in audio), "only silence"


async def test_receive_message_yields_audio_frames_between_the_text_frames(start_server):
    server = await speaking_server(start_server)
    async with open_wire(server, "socket") as wire:
        assert wire.session["payload"]["audio_formats"] == [
            {"format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "channels": 1}
        ]
        await wire.request("r1", TEXT, agent="echo", options=SPOKEN)
        messages: list[Frame | AudioFrame] = []
        with trio.fail_after(10):
            while True:
                message = await wire.receive_message()
                messages.append(message)
                if isinstance(message, dict) and message["msg_type"] == "DONE":
                    break
        audio = [m for m in messages if isinstance(m, AudioFrame)]
        text = [m for m in messages if not isinstance(m, AudioFrame)]
        assert all(isinstance(frame, dict) for frame in text)
        done = text[-1]
        assert done["payload"]["status"] == "completed"
        check_audio(audio, "r1", done)
        assert wire.audio == audio
        streams = [f for f in text if f["msg_type"] == "STREAM"]
        assert "".join(f["payload"]["delta"] for f in streams) == TEXT
        # The text and the audio arrive interleaved, in wire order: the first word
        # before the first chunk (captions never lag their sound), DONE last.
        assert messages.index(streams[0]) < messages.index(audio[0])
        assert messages.index(streams[-1]) > messages.index(audio[0])
        # Every AUDIO frame is on the transcript as its header, and checked.
        heard = [line.frame for line in wire.transcript if line.frame.get("msg_type") == "AUDIO"]
        assert heard == [chunk.header.model_dump() for chunk in audio]
        assert str(wire.transcript[-2]).startswith("<- AUDIO r1 seq=")
        assert wire.finish() == []
        assert wire.violations == []


async def test_receive_passes_over_audio_and_keeps_it(start_server):
    """The text API of before: ``until_done`` returns dicts only, and the AUDIO frames it
    passed over are kept in ``wire.audio`` and checked all the same."""
    server = await speaking_server(start_server)
    async with open_wire(server, "socket") as wire:
        await wire.request("r1", TEXT, agent="echo", options=SPOKEN)
        with trio.fail_after(10):
            frames = await wire.receive_until(
                lambda f: f.get("msg_type") == "DONE" and f.get("request_id") == "r1"
            )
        assert all(isinstance(frame, dict) and frame["msg_type"] != "AUDIO" for frame in frames)
        check_audio(wire.audio, "r1", frames[-1])
        # A text-only request on the same connection reads exactly as it did before.
        await wire.request("r2", "plain", agent="echo")
        with trio.fail_after(10):
            done = await wire.until_done("r2")
        assert done["payload"] == {"status": "completed", "interrupted": False, "frames": 1}
        assert [a.request_id for a in wire.audio] == ["r1"] * len(wire.audio)
        assert wire.finish() == []


async def test_audio_that_breaks_a_guarantee_or_does_not_decode_is_a_violation(nursery):
    """The connection never raises for what the server sends: an AUDIO frame of a
    request never made breaks guarantee 8, and bytes that are no AUDIO frame break
    the wire format (violation 0); the connection reads on."""
    fake = start_fake(nursery, session=voice_session_payload())
    async with trio.open_nursery() as client_nursery:
        ws = await wrap_client_stream(
            client_nursery,
            fake.client_stream,
            "fake.test",
            "/ws",
            subprotocols=["trio-agent.v1"],
        )
        wire = WireConnection(ws, fake.client_stream)
        wire.session = await wire.receive()
        await fake.audio("nobody", 0, 0, tone(20))
        stray = await wire.receive_message()
        assert isinstance(stray, AudioFrame)
        assert stray.samples == tone(20)
        assert [v.guarantee for v in wire.violations] == [8]

        await fake.send_raw(b"\x00\x40{not json")
        whole = encode_audio_frame(
            AudioHeader(request_id="r", seq=0, start_ms=0, duration_ms=20, sample_rate=16000),
            tone(20),
        )
        await fake.send_raw(whole[:-1])  # half a sample short
        await fake.stream("later", 0, "x")
        assert (await wire.receive()) == {"raw": "binary, 11 bytes: b'\\x00@{not json'"}
        malformed = await wire.receive_message()
        assert isinstance(malformed, dict)
        assert malformed["raw"].startswith("binary, ")
        assert (await wire.receive())["msg_type"] == "STREAM"
        assert [v.guarantee for v in wire.violations] == [8, 0, 0, 8]
        assert "not a valid AUDIO frame" in wire.violations[1].message
        assert len(wire.audio) == 1
        await ws.aclose()
        client_nursery.cancel_scope.cancel()


def test_an_audio_frame_in_one_line():
    header = AudioHeader(request_id="r1", seq=2, start_ms=40.0, duration_ms=20.0, sample_rate=16000)
    assert summarize(header.model_dump()) == "AUDIO r1 seq=2 start_ms=40.0 duration_ms=20.0"


@pytest.mark.parametrize("transport", ["memory", "lockstep"])
async def test_spoken_replies_decode_over_memory_streams_too(start_server, transport):
    server = await speaking_server(start_server)
    async with open_wire(server, transport) as wire:
        await wire.request("r1", TEXT, agent="echo", options=SPOKEN)
        done = await wire.until_done("r1")
        check_audio(wire.audio, "r1", done)
        assert wire.finish() == []
