"""Speech end to end: AUDIO frames, pacing, truncation (audio_ms/heard_ms/heard_text),
the ms budget of the stream lane, and a synthesiser process killed on interrupt.

Most tests use the built-in synthesiser, whose word boundaries are exact: "hello"
is two syllables, 0-240 ms; a 40 ms gap; "there" is two syllables, 280-520 ms; and
so on (120 ms a syllable, 40 ms between words).
"""

from __future__ import annotations

import itertools
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_agent import AgentServer, ServerConfig
from trio_agent import agents as builtin
from trio_agent.protocol.audio import AudioHeader, encode_audio_frame
from trio_agent.server import request_runner
from trio_agent.speech.stage import Speaker
from trio_agent.speech.synthesizers import BuiltinSynthesizer, EspeakSynthesizer
from trio_agent.testing.wire import Frame, WireClient, connect, only


@pytest.fixture(params=["memory", "socket"])
def transport(request) -> str:
    return request.param


_interrupt_ids = itertools.count()


def agents():
    return {"lorem": builtin.lorem, "echo": builtin.echo}


async def speaking_server(start_server, **settings) -> AgentServer:
    settings.setdefault("speech", "builtin")
    return await start_server(agents(), **settings)


async def spoken(c: WireClient, rid: str, text: str, **options) -> Frame:
    options.setdefault("voice", True)
    return await c.request(rid, text, agent="echo", **options)


async def interrupt(c: WireClient, rid: str | None, **payload) -> str:
    msg_id = f"i{next(_interrupt_ids)}"
    frame: Frame = {"msg_type": "INTERRUPT", "msg_id": msg_id, "payload": payload}
    if rid is not None:
        frame["request_id"] = rid
    await c.send(frame)
    return msg_id


def audio_of(c: WireClient, rid: str) -> list[Frame]:
    return only(c.received, "AUDIO", rid)


def is_audio(rid: str, start_ms: float):
    return lambda f: (
        f["msg_type"] == "AUDIO" and f["request_id"] == rid and f["start_ms"] >= start_ms
    )


# --------------------------------------------------------------------------- SESSION, options


async def test_session_lists_voices_formats_and_the_synthesizer(start_server):
    server = await speaking_server(start_server)
    async with connect(server) as c:
        payload = c.session["payload"]
        assert payload["protocol"] == "1.2"
        assert payload["voices"] == ["tone", "tone-low"]
        assert payload["default_voice"] == "tone"
        assert payload["audio_formats"] == [
            {"format": "pcm_s16le", "sample_rate": 16000, "channels": 1}
        ]
        assert payload["synthesizer"] == "builtin"


async def test_with_speech_off_the_session_offers_no_voice_and_refuses_one(start_server):
    server = await speaking_server(start_server, speech="off")
    async with connect(server) as c:
        payload = c.session["payload"]
        assert payload["voices"] == []
        assert payload["audio_formats"] == []
        assert "default_voice" not in payload
        assert "synthesizer" not in payload
        await spoken(c, "r1", "hello")
        error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
        assert error["payload"]["code"] == "UNKNOWN_VOICE"
        assert error["request_id"] == "r1"
        c.assert_guarantees()


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"voice": "nobody"}, "UNKNOWN_VOICE"),
        ({"voice": 3}, "INVALID_MESSAGE"),
        ({"voice": True, "audio_pace": -1}, "INVALID_MESSAGE"),
        ({"voice": True, "audio_pace": "fast"}, "INVALID_MESSAGE"),
        ({"voice": True, "audio_pace": True}, "INVALID_MESSAGE"),
    ],
)
async def test_bad_speech_options_are_refused_with_an_error(start_server, options, code):
    server = await speaking_server(start_server)
    async with connect(server) as c:
        await c.request("r1", "hello", agent="echo", **options)
        error = (await c.recv_until(lambda f: f["msg_type"] == "ERROR"))[-1]
        assert error["payload"]["code"] == code
        assert error["request_id"] == "r1"
        # Refused, so the id is free and the session serves on.
        await spoken(c, "r1", "hello", audio_pace=0)
        done = (await c.until_done("r1"))[-1]
        assert done["payload"]["status"] == "completed"
        c.assert_guarantees()


@pytest.mark.parametrize("played_ms", [-1, "10", True, None])
async def test_a_bad_played_ms_makes_the_interrupt_invalid(start_server, played_ms):
    server = await speaking_server(start_server)
    async with connect(server) as c:
        await c.send({"msg_type": "INTERRUPT", "msg_id": "i1", "payload": {"played_ms": played_ms}})
        frame = await c.recv()
        if played_ms is None:  # null is "not given"
            assert frame["msg_type"] == "INTERRUPT_ACK"
        else:
            assert frame["msg_type"] == "ERROR"
            assert frame["payload"]["code"] == "INVALID_MESSAGE"
            assert frame["ref"] == "i1"


# --------------------------------------------------------------------------- binary frames


def good_audio_frame() -> bytes:
    header = AudioHeader(request_id="r1", seq=0, start_ms=0, duration_ms=0.125, sample_rate=16000)
    return encode_audio_frame(header, b"\x00\x00\x01\x00")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\xff\xff{}", b"\x00\x02{}", b"\x00\x05hello", good_audio_frame()],
    ids=["empty", "one-byte", "length-past-end", "not-audio", "not-json", "well-formed-audio"],
)
async def test_a_binary_message_from_a_client_gets_an_error_never_a_crash(
    start_server, transport, data
):
    server = await speaking_server(start_server)
    async with connect(server, transport) as c:
        await c.send_raw(data)
        error = await c.recv()
        assert error["msg_type"] == "ERROR"
        assert error["payload"]["code"] == "INVALID_MESSAGE"
        # It says what to send instead, and nothing of AUDIO (the client meant none).
        message = error["payload"]["message"]
        assert message == (
            f"binary frames are not accepted (got {len(data)} bytes): a client sends "
            "JSON text frames only"
        )
        assert "request_id" not in error["payload"]
        # The session lives on.
        await spoken(c, "r1", "hello", audio_pace=0)
        assert (await c.until_done("r1"))[-1]["payload"]["status"] == "completed"
        c.assert_guarantees()


# --------------------------------------------------------------------------- a whole spoken reply


async def test_a_spoken_reply_streams_words_then_their_audio_and_counts_it_exactly(
    start_server, transport
):
    text = "hello there, how are you today? I am fine"
    server = await speaking_server(start_server)
    async with connect(server, transport) as c:
        await spoken(c, "r1", text, audio_pace=0)
        done = (await c.until_done("r1"))[-1]["payload"]
        words = only(c.received, "STREAM", "r1")
        audio = audio_of(c, "r1")

        # The words, as captions, make the text; each carries where its sound starts.
        assert "".join(w["payload"]["delta"] for w in words) == text
        synth = BuiltinSynthesizer()
        assert [w["payload"]["start_ms"] for w in words[:3]] == [0.0, 280.0, 640.0]
        assert words[0]["payload"]["delta"] == "hello"
        assert synth.syllables("hello") == synth.syllables("there") == 2

        # Audio: contiguous seq and start_ms, 20 ms chunks, exact sums.
        assert [a["seq"] for a in audio] == list(range(len(audio)))
        at = 0.0
        for a in audio:
            assert a["start_ms"] == at
            assert a["duration_ms"] == 20.0 == len(a["samples"]) / 2 * 1000 / 16000
            assert (a["format"], a["sample_rate"], a["channels"]) == ("pcm_s16le", 16000, 1)
            at += a["duration_ms"]
        assert done["audio_ms"] == at == sum(a["duration_ms"] for a in audio)
        assert done["heard_ms"] == done["audio_ms"]
        assert done["heard_text"] == text
        assert done["frames"] == len(words)  # STREAM frames only

        # A word's STREAM frame comes before the chunk its sound starts in.
        order = [f for f in c.received if f.get("request_id") == "r1"]
        for word in words:
            start = word["payload"]["start_ms"]
            first_chunk = next(
                a for a in audio if a["start_ms"] <= start < a["start_ms"] + a["duration_ms"]
            )
            assert order.index(word) < order.index(first_chunk)
        c.assert_guarantees()


async def test_a_text_reply_has_no_audio_and_no_audio_fields(start_server):
    server = await speaking_server(start_server)
    async with connect(server) as c:
        await c.request("r1", "hello there", agent="echo")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert not audio_of(c, "r1")
        assert not {"audio_ms", "heard_ms", "heard_text"} & set(done)
        assert all("start_ms" not in f["payload"] for f in only(c.received, "STREAM"))


async def test_lorem_can_be_spoken_too(start_server):
    server = await speaking_server(start_server)
    async with connect(server) as c:
        await c.request(
            "r1", "", agent="lorem", voice="tone-low", audio_pace=0, words=30, words_per_s=0
        )
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["heard_text"] == "".join(builtin.lorem_words(30))
        assert done["audio_ms"] == sum(a["duration_ms"] for a in audio_of(c, "r1")) > 0


# --------------------------------------------------------------------------- pacing


@pytest.mark.parametrize("pace", [1, 2, 0])
async def test_audio_is_paced_at_real_time_scaled_by_audio_pace(start_server, autojump_clock, pace):
    # Without a lead every chunk is written at its own time (the clock starts on
    # the grid, so the millisecond rounding of the shared timers adds nothing).
    server = await speaking_server(start_server, audio_lead_ms=0)
    async with connect(server) as c:
        await spoken(c, "r1", "hello there, how are you", audio_pace=pace)
        await c.until_done("r1")
        audio = audio_of(c, "r1")
        assert len(audio) > 50
        t0 = audio[0]["received_at"]
        for a in audio:
            due = a["start_ms"] / 1000 / pace if pace else 0.0
            assert a["received_at"] - t0 == pytest.approx(due, abs=1e-9)


@pytest.mark.parametrize("lead_ms", [20, 40, 30])
async def test_a_lead_sends_the_chunks_due_within_it_together(
    start_server, autojump_clock, lead_ms
):
    server = await speaking_server(start_server, audio_lead_ms=lead_ms)
    async with connect(server) as c:
        await spoken(c, "r1", "hello there, how are you")
        await c.until_done("r1")
        audio = audio_of(c, "r1")
        t0 = audio[0]["received_at"]
        groups: dict[float, list[float]] = {}
        for a in audio:
            sent = a["received_at"] - t0
            due = a["start_ms"] / 1000
            # Never late, never further ahead than the lead.
            assert due - lead_ms / 1000 - 1e-9 <= sent <= due + 1e-9
            groups.setdefault(round(sent, 6), []).append(a["start_ms"])
        # A group is the chunk that was due and those starting within the lead.
        per_group = lead_ms // 20 + 1
        for starts in groups.values():
            assert starts == [starts[0] + 20 * k for k in range(len(starts))]
            assert len(starts) <= per_group
        assert len(groups) == -(-len(audio) // per_group)


async def test_a_cancelled_request_queues_nothing_even_when_the_lane_has_room(
    start_server, autojump_clock, monkeypatch
):
    # The speech sink is not a schedule point when there is room (a group of
    # chunks is queued whole), but it is a cancellation point: a request whose
    # scope is cancelled while its phase is still RUNNING (its own deadline, the
    # session ending) queues no word and no chunk after it.
    sinks: list[Any] = []

    class RecordingSpeaker(Speaker):
        def __init__(self, sink: Any, *args: Any, **kwargs: Any) -> None:
            sinks.append(sink)
            super().__init__(sink, *args, **kwargs)

    monkeypatch.setattr(request_runner, "Speaker", RecordingSpeaker)
    queued: list[str] = []

    async def cut_then_send(request: Any, stream: Any) -> None:
        (sink,) = sinks
        with trio.CancelScope() as scope:
            scope.cancel()  # as a deadline would: nobody ended the request
            await sink.send_audio(bytes(640), start_sample=0)
            queued.append("audio")
        with trio.CancelScope() as scope:
            scope.cancel()
            await sink.send_word("hello", start_ms=0.0, end_ms=20.0)
            queued.append("word")

    server = await start_server({"cut": cut_then_send}, speech="builtin")
    async with connect(server) as c:
        await c.request("r1", "hello", agent="cut", voice=True)
        done = (await c.until_done("r1"))[-1]["payload"]
    assert queued == []
    assert (done["status"], done["frames"], done["audio_ms"]) == ("completed", 0, 0.0)
    assert audio_of(c, "r1") == only(c.received, "STREAM", "r1") == []


# --------------------------------------------------------------------------- truncation


async def cut_after(c: WireClient, rid: str, last_start_ms: float, **payload) -> dict:
    """Interrupt ``rid`` once the chunk starting at ``last_start_ms`` has arrived.

    Paced in real time on a MockClock, the next chunk is 20 ms away, so the server
    reads the INTERRUPT first: ``audio_ms`` is then exactly ``last_start_ms + 20``.
    """
    await c.recv_until(is_audio(rid, last_start_ms))
    msg_id = await interrupt(c, rid, **payload)
    await c.until_ack(msg_id)
    return (await c.until_done(rid))[-1]["payload"]


@pytest.mark.parametrize(
    ("last_chunk", "payload", "audio_ms", "heard_ms", "heard_text"),
    [
        # No played_ms: everything written counts as heard.
        (200.0, {}, 220.0, 220.0, ""),  # in the middle of "hello" (0-240)
        (220.0, {}, 240.0, 240.0, "hello"),  # at the very end of "hello"
        (240.0, {}, 260.0, 260.0, "hello"),  # between "hello" and "there" (280-520)
        (360.0, {}, 380.0, 380.0, "hello"),  # in the middle of "there,"
        (500.0, {}, 520.0, 520.0, "hello there,"),
        # played_ms: what the client says it played, capped by what was written.
        (360.0, {"played_ms": 100}, 380.0, 100.0, ""),
        (360.0, {"played_ms": 239.5}, 380.0, 239.5, ""),
        (360.0, {"played_ms": 250}, 380.0, 250.0, "hello"),
        (360.0, {"played_ms": 10_000}, 380.0, 380.0, "hello"),
        (360.0, {"played_ms": 0}, 380.0, 0.0, ""),
    ],
)
async def test_audio_ms_heard_ms_and_heard_text_are_exact_at_the_cut(
    start_server, autojump_clock, last_chunk, payload, audio_ms, heard_ms, heard_text
):
    # Each chunk at its own time, so that the cut falls after any chunk we like.
    server = await speaking_server(start_server, audio_lead_ms=0)
    async with connect(server) as c:
        await spoken(c, "r1", "hello there, how are you")
        done = await cut_after(c, "r1", last_chunk, **payload)
        assert done["status"] == "interrupted"
        assert done["audio_ms"] == audio_ms == sum(a["duration_ms"] for a in audio_of(c, "r1"))
        assert done["heard_ms"] == heard_ms
        assert done["heard_text"] == heard_text
        c.assert_guarantees()


async def test_an_interrupt_all_ignores_played_ms(start_server, autojump_clock):
    server = await speaking_server(start_server, audio_lead_ms=0)
    async with connect(server) as c:
        await spoken(c, "r1", "hello there, how are you")
        await c.recv_until(is_audio("r1", 360.0))
        await c.until_ack(await interrupt(c, None, played_ms=100))
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["audio_ms"] == done["heard_ms"] == 380.0
        assert done["heard_text"] == "hello"


# --------------------------------------------------------------------------- barge-in


async def test_no_audio_of_a_cut_request_after_its_ack(start_server, transport):
    server = await speaking_server(start_server)
    async with connect(server, transport) as c:
        await c.request("r1", "", agent="lorem", voice=True, audio_pace=0, words=2000)
        await c.recv_until(is_audio("r1", 1000.0))
        ack_id = await interrupt(c, "r1")
        await c.until_ack(ack_id)
        # Guarantee 5 for AUDIO: the next frame about r1 is its DONE.
        done = await c.recv()
        assert done["msg_type"] == "DONE"
        assert done["request_id"] == "r1"
        assert done["payload"]["audio_ms"] == sum(a["duration_ms"] for a in audio_of(c, "r1"))
        # And a new spoken request starts from seq 0 at 0 ms.
        await spoken(c, "r2", "hello", audio_pace=0)
        await c.until_done("r2")
        assert audio_of(c, "r2")[0]["seq"] == 0
        assert audio_of(c, "r2")[0]["start_ms"] == 0.0
        c.assert_guarantees()


async def test_the_audio_queue_holds_its_budget_in_ms_with_a_client_that_reads_slowly(
    start_server,
):
    budget_ms = 100.0
    server = await speaking_server(start_server, audio_queue_ms=budget_ms, write_batch_frames=1)
    async with connect(server, lockstep=True) as c:
        await c.request("r1", "", agent="lorem", voice=True, audio_pace=0, words=200)
        (session,) = server.sessions.values()
        lanes = session.lanes
        most = 0.0
        for _ in range(60):
            await trio.testing.wait_all_tasks_blocked()
            most = max(most, lanes.audio_queued_ms)
            assert lanes.audio_queued_ms <= budget_ms
            await c.recv()
        assert most == budget_ms  # the speaker did fill it: the bound is what stopped it
        # What an INTERRUPT finds is at most the budget, and all of it is dropped.
        queued = lanes.audio_queued_ms
        ack_id = await interrupt(c, "r1")
        frames = await c.until_ack(ack_id)
        late = [f for f in frames if f["msg_type"] == "AUDIO"]
        # Lockstep: nothing buffers in between but the client library (trio-websocket's
        # reader holds a message in its queue and one in hand) and the chunk the writer
        # was sending: the queued ones were dropped.
        assert sum(a["duration_ms"] for a in late) <= 60.0
        assert queued <= budget_ms
        assert lanes.audio_queued_ms == 0.0
        done = await c.recv()
        assert done["msg_type"] == "DONE"
        assert done["payload"]["audio_ms"] == sum(a["duration_ms"] for a in audio_of(c, "r1"))


# --------------------------------------------------------------------------- the synthesiser process


@pytest.fixture
def hanging_synthesizer(tmp_path: Path) -> Path:
    """A stand-in for espeak-ng that never answers (and holds its stdout open)."""
    script = tmp_path / "espeak-ng"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_an_interrupt_kills_the_synthesiser_process_at_once(
    nursery, transport, hanging_synthesizer
):
    started: list[trio.Process] = []
    running = trio.Event()

    def spawned(process: trio.Process) -> None:
        started.append(process)
        running.set()

    synthesizer = EspeakSynthesizer(str(hanging_synthesizer), on_process=spawned)
    server = AgentServer(ServerConfig(port=0), agents(), synthesizer=synthesizer)
    await nursery.start(server.run)
    async with connect(server, transport) as c:
        assert c.session["payload"]["synthesizer"] == "espeak-ng"
        await spoken(c, "r1", "hello there")
        with trio.fail_after(5):
            await running.wait()
        (process,) = started
        assert process.returncode is None
        assert os.path.exists(f"/proc/{process.pid}")
        await c.until_ack(await interrupt(c, "r1"))
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "interrupted"
        assert done["audio_ms"] == 0.0
        # Killed and reaped by the request's own cleanup, not at the end of the session
        # (the sleep would take 60 s).
        with trio.fail_after(2):
            await process.wait()
        assert process.returncode == -9
        assert not os.path.exists(f"/proc/{process.pid}")
        # The session serves on.
        await c.heartbeat()
        await c.recv_until(lambda f: f["msg_type"] == "HEARTBEAT")


@pytest.mark.espeak
async def test_espeak_ng_speaks_and_leaves_no_process_after_an_interrupt(nursery):
    started: list[trio.Process] = []
    espeak = EspeakSynthesizer.installed()
    assert espeak is not None
    espeak.on_process = started.append
    server = AgentServer(ServerConfig(port=0), agents(), synthesizer=espeak)
    await nursery.start(server.run)
    async with connect(server, "socket") as c:
        payload = c.session["payload"]
        assert payload["synthesizer"] == "espeak-ng"
        assert payload["audio_formats"][0]["sample_rate"] == 22050
        assert "en-us" in payload["voices"]
        text = "Hello there. This reply is spoken by espeak, phrase by phrase."
        await spoken(c, "r1", text, audio_pace=0)
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["heard_text"] == text
        audio = audio_of(c, "r1")
        assert done["audio_ms"] == sum(a["duration_ms"] for a in audio) > 1000
        assert all(a["duration_ms"] == 20.0 and a["sample_rate"] == 22050 for a in audio)
        assert any(a["samples"].strip(b"\x00") for a in audio)  # not silence

        await spoken(c, "r2", "one, two, three, four, five, six, seven, eight, nine, ten")
        await c.recv_until(is_audio("r2", 100.0))
        await c.until_ack(await interrupt(c, "r2", played_ms=50))
        done = (await c.until_done("r2"))[-1]["payload"]
        assert done["heard_ms"] == 50.0
        for process in started:
            with trio.fail_after(2):
                await process.wait()
            assert not os.path.exists(f"/proc/{process.pid}")


async def test_a_failing_synthesiser_fails_the_request_not_the_session(nursery, tmp_path):
    script = tmp_path / "espeak-ng"
    script.write_text("#!/bin/sh\ncat >/dev/null\nexit 3\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    server = AgentServer(
        replace(ServerConfig(port=0)), agents(), synthesizer=EspeakSynthesizer(str(script))
    )
    await nursery.start(server.run)
    async with connect(server) as c:
        await spoken(c, "r1", "hello")
        done = (await c.until_done("r1"))[-1]["payload"]
        assert done["status"] == "failed"
        assert "status 3" in done["error"]["message"]
        assert done["audio_ms"] == 0.0
        c.assert_guarantees()
