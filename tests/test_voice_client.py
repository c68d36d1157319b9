"""Speech on the Python client (protocol v1.1): AUDIO frames, played_ms, heard_text.

The pure state machine is driven frame by frame; the client runs against the
scripted fake server, which sends AUDIO binary frames the way the contract says.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from fake_server import FAKE_URL, start_fake, tone, voice_session_payload

from trio_agent.client import AudioChunk, AudioFormat, ClientState, open_agent_client
from trio_agent.client.state import ProtocolBreach, RequestUpdated
from trio_agent.protocol.audio import AudioHeader, encode_audio_frame
from trio_agent.protocol.guarantees import GuaranteeChecker


def frame(msg_type: str, **fields: Any) -> str:
    return json.dumps({"msg_type": msg_type, "msg_id": "s", "session_id": "s1", "ts": 0, **fields})


def audio_frame(request_id: str, seq: int, start_ms: float, ms: int, rate: int = 16000) -> bytes:
    samples = tone(ms, rate)
    header = AudioHeader(
        request_id=request_id,
        seq=seq,
        start_ms=start_ms,
        duration_ms=ms,
        sample_rate=rate,
        channels=1,
    )
    return encode_audio_frame(header, samples)


def opened() -> ClientState:
    client_state = ClientState()
    client_state.receive(frame("SESSION", payload=voice_session_payload()))
    return client_state


def spoken_request(c: ClientState, request_id: str = "r1"):
    state, out = c.request("speak", options={"voice": True}, request_id=request_id)
    c.sending(out)
    return state


# --------------------------------------------------------------------------- the client state


def test_audio_frames_become_chunks_with_their_timing():
    c = opened()
    assert c.session is not None
    assert c.session.payload.voices == ["builtin"]
    assert c.session.payload.audio_formats[0].sample_rate == 16000
    state = spoken_request(c)
    assert state.voice
    c.receive(frame("STREAM", request_id="r1", payload={"seq": 0, "delta": "Hi", "start_ms": 0}))
    assert c.receive(audio_frame("r1", 0, 0, 40)) == [RequestUpdated(state)]
    c.receive(audio_frame("r1", 1, 40, 20, rate=22050))
    first, second = state.audio
    assert isinstance(first, AudioChunk)
    assert (first.seq, first.start_ms, first.duration_ms, first.sample_rate) == (0, 0, 40, 16000)
    assert len(first.samples) == 16000 * 40 // 1000 * 2
    assert (second.start_ms, second.end_ms, second.sample_rate) == (40, 60, 22050)
    assert state.chunks[0].start_ms == 0
    assert state.audio_received_ms == 60
    assert state.take_audio() is first
    assert state.audio_consumed_ms == 40


def test_the_done_of_a_spoken_reply_says_what_was_heard():
    c = opened()
    state = spoken_request(c)
    c.receive(audio_frame("r1", 0, 0, 40))
    c.receive(
        frame(
            "DONE",
            request_id="r1",
            payload={
                "status": "completed",
                "interrupted": False,
                "frames": 0,
                "audio_ms": 40,
                "heard_ms": 40,
                "heard_text": "Hi",
            },
        )
    )
    assert state.server_done is not None
    assert (state.server_done.audio_ms, state.server_done.heard_ms) == (40, 40)
    assert state.server_done.heard_text == "Hi"


def test_played_ms_goes_with_an_interrupt_of_one_request_only():
    c = opened()
    spoken_request(c)
    _, out = c.interrupt("r1", played_ms=123.5)
    assert json.loads(out.text)["payload"] == {"reason": "USER_NEW_INPUT", "played_ms": 123.5}
    assert out.frame["payload"]["played_ms"] == 123.5
    _, out = c.interrupt("r1", played_ms=100)
    assert json.loads(out.text)["payload"]["played_ms"] == 100.0
    with pytest.raises(ValueError, match="names one request"):
        c.interrupt(None, played_ms=10)
    with pytest.raises(ValueError, match="finite number"):
        c.interrupt("r1", played_ms=-1)
    _, out = c.interrupt()
    assert "played_ms" not in json.loads(out.text)["payload"]


def test_the_cut_drops_queued_audio_and_later_audio_is_stale():
    c = opened()
    state = spoken_request(c)
    for seq in range(3):
        c.receive(audio_frame("r1", seq, seq * 20, 20))
    c.interrupt("r1", played_ms=20)
    assert not state.audio
    assert c.receive(audio_frame("r1", 3, 60, 20)) == []
    assert state.stale_audio_dropped == 1
    assert state.audio_received_ms == 60


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\x00", "too short"),
        (b"\x00\x09not json!", "not UTF-8 JSON"),
        (audio_frame("r1", 0, 0, 20)[:-1], "whole"),
    ],
)
def test_a_malformed_audio_frame_is_a_breach(raw, words):
    c = opened()
    spoken_request(c)
    events = c.receive(raw)
    assert [type(e) for e in events] == [ProtocolBreach]
    assert words in events[0].message


def test_the_checker_holds_audio_to_the_guarantees():
    checker = GuaranteeChecker()
    checker.sent({"msg_type": "REQUEST", "request_id": "r1"})
    checker.sent({"msg_type": "INTERRUPT", "msg_id": "c1", "request_id": "r1"})
    assert checker.received({"msg_type": "AUDIO", "request_id": "r1", "seq": 0}) == []
    skipped = checker.received({"msg_type": "AUDIO", "request_id": "r1", "seq": 2})
    assert [v.guarantee for v in skipped] == [2]
    checker.received(
        {
            "msg_type": "INTERRUPT_ACK",
            "ref": "c1",
            "payload": {
                "interrupted": ["r1"],
                "interrupted_count": 1,
                "reason": "x",
                "targets": {},
            },
        }
    )
    after_ack = checker.received({"msg_type": "AUDIO", "request_id": "r1", "seq": 2})
    assert [v.guarantee for v in after_ack] == [5]
    checker.received(
        {
            "msg_type": "DONE",
            "request_id": "r1",
            "payload": {"status": "interrupted", "interrupted": True, "frames": 0},
        }
    )
    after_done = checker.received({"msg_type": "AUDIO", "request_id": "r1", "seq": 4})
    assert [v.guarantee for v in after_done] == [1]
    stranger = checker.received({"msg_type": "AUDIO", "request_id": "r9", "seq": 0})
    assert [v.guarantee for v in stranger] == [8]


# --------------------------------------------------------------------------- the client


async def test_the_client_streams_audio_and_reports_what_was_heard(nursery, autojump_clock):
    fake = start_fake(nursery, session=voice_session_payload())
    async with open_agent_client(
        FAKE_URL, stream=fake.client_stream, strict=True, heartbeat_s=None
    ) as client:
        assert client.voices == ("builtin",)
        assert (client.default_voice, client.synthesizer) == ("builtin", "builtin")
        assert client.audio_formats == (AudioFormat(sample_rate=16000),)
        response = await client.request("speak", request_id="r1", voice=True, audio_pace=0)
        request = await fake.recv_type("REQUEST")
        assert request["payload"]["options"] == {"voice": True, "audio_pace": 0}
        assert response.spoken

        await fake.stream("r1", 0, "Hello", start_ms=0)
        await fake.audio("r1", 0, 0, tone(100))
        await fake.audio("r1", 1, 100, tone(100))
        await fake.done("r1", 1, audio_ms=200, heard_ms=200, heard_text="Hello")
        chunks = [chunk async for chunk in response.audio()]
        assert [(c.seq, c.start_ms, c.duration_ms) for c in chunks] == [(0, 0, 100), (1, 100, 100)]
        assert chunks[0].samples == tone(100)
        assert [chunk.start_ms async for chunk in response] == [0]
        assert (response.audio_ms, response.heard_ms, response.heard_text) == (200, 200, "Hello")
        assert response.played_ms == 200  # by default: the audio the application took
        assert client.violations == []


async def test_interrupting_one_spoken_request_sends_its_playback_clock(nursery, autojump_clock):
    """By default played_ms is the audio taken from response.audio(); a player's own
    clock replaces it; an interrupt-all sends none. The cut drops queued audio at once."""
    fake = start_fake(nursery, session=voice_session_payload())
    async with open_agent_client(
        FAKE_URL, stream=fake.client_stream, strict=True, heartbeat_s=None
    ) as client:
        response = await client.request("speak", request_id="r1", voice=True)
        await fake.recv_type("REQUEST")
        for seq in range(4):
            await fake.audio("r1", seq, seq * 100, tone(100))
        audio = response.audio()
        assert (await anext(audio)).seq == 0
        await trio.testing.wait_all_tasks_blocked()  # the other three have arrived
        assert response.audio_queued_ms == 300

        await client.interrupt("r1")
        interrupt = await fake.recv_type("INTERRUPT")
        assert interrupt["payload"]["played_ms"] == 100
        # Optimistic: the queued audio is gone at once, and the iteration is over.
        assert response.audio_queued_ms == 0
        assert [chunk async for chunk in audio] == []
        await fake.audio("r1", 4, 400, tone(100))  # in flight when the server read it
        await trio.testing.wait_all_tasks_blocked()
        assert response.stale_audio_dropped == 1
        await fake.ack(interrupt["msg_id"], ["r1"])
        await fake.done(
            "r1", 0, "interrupted", interrupted=True, audio_ms=500, heard_ms=100, heard_text=""
        )
        assert (await response.wait_server_done()).heard_ms == 100

        second = await client.request("again", request_id="r2", voice="builtin")
        await fake.recv_type("REQUEST")
        second.use_playback_clock(lambda: 42.0)
        await second.interrupt()
        assert (await fake.recv_type("INTERRUPT"))["payload"]["played_ms"] == 42

        third = await client.request("and again", request_id="r3", voice=True)
        await fake.recv_type("REQUEST")
        await fake.audio("r3", 0, 0, tone(100))
        await client.interrupt()
        everything = await fake.recv_type("INTERRUPT")
        assert "request_id" not in everything
        assert "played_ms" not in everything["payload"]
        assert third.ended

        silent = await client.request("no voice", request_id="r4")
        await fake.recv_type("REQUEST")
        await client.interrupt("r4")
        assert "played_ms" not in (await fake.recv_type("INTERRUPT"))["payload"]
        assert [chunk async for chunk in silent.audio()] == []


# --------------------------------------------------------------------------- the real server


async def test_against_the_server_played_ms_decides_what_was_heard(start_server, autojump_clock):
    """The built-in synthesiser, in strict mode: the audio is contiguous, the
    words carry start_ms, and an interrupt with the default playback clock (audio
    taken) gets back heard_ms == played_ms and heard_text a prefix of the words
    whose audio ended by then."""
    server = await start_server(speech="builtin")
    async with open_agent_client(server.url, strict=True, heartbeat_s=None) as client:
        assert client.synthesizer == "builtin"
        assert client.audio_formats == (AudioFormat(sample_rate=16000),)
        response = await client.request(
            "speak", agent="lorem", options={"words": 200, "words_per_s": 0}, voice=True
        )
        taken = []
        async for chunk in response.audio():
            assert chunk.start_ms == sum(c.duration_ms for c in taken)
            assert chunk.sample_rate == 16000
            taken.append(chunk)
            if sum(c.duration_ms for c in taken) >= 1500:
                break
        played = response.played_ms
        assert played == sum(c.duration_ms for c in taken)
        await client.interrupt(response.request_id)
        assert [chunk async for chunk in response.audio()] == []
        done = await response.wait_server_done()
        assert done.interrupted
        assert done.heard_ms == played
        assert done.audio_ms is not None
        assert done.audio_ms >= played
        words = [chunk async for chunk in response]  # the text that arrived before the cut
        assert words == []  # a local cut drops what was not consumed...
        heard = done.heard_text
        assert heard
        assert response.text.startswith(heard)  # ...but text keeps it: heard is a prefix
        assert client.violations == []
