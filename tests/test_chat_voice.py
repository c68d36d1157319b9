"""``trio-agent chat --voice``: replies to WAV files and through a player command.

The scripted fake server sends AUDIO binary frames. The player is a real process
(a few lines of Python) that reports to the test over a loopback socket: its pid
when it starts, and ``eof`` if it ever reaches the end of its input. A barge-in
must kill it, so ``eof`` never comes and the process is gone (reaped) when the
chat returns; and it must kill it before the INTERRUPT is written, which a test
sees by decoding what the chat writes to its socket as it writes it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from fake_server import FAKE_URL, start_fake, tone, voice_session_payload
from test_chat import Keyboard, Transcript, index
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from trio_agent.cli.chat import run_chat
from trio_agent.cli.chat_voice import VoiceSettings, voice_settings
from trio_agent.cli.main import build_parser
from trio_agent.client.playback import player_argv, streaming_wav_header

PLAYER = """
import os, socket, sys
report = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
report.sendall(b"%d\\n" % os.getpid())
if sys.argv[2:] == ["stall"]:  # reads none of its input, so its pipe fills up
    report.recv(1)
while sys.stdin.buffer.read1(65536):
    pass
report.sendall(b"eof\\n")
if sys.argv[2:] == ["linger"]:  # still playing what it buffered: until the test says
    report.recv(1)
"""


#: 100 ms chunks of 16 kHz audio enough to fill a pipe (64 KiB on Linux) twice.
STALLED_CHUNKS = 2 * 65536 // 3200 + 1


async def player_listener() -> tuple[trio.SocketListener, int]:
    """Where the test player reports to, and its port."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener, listener.socket.getsockname()[1]


async def read_until(stream: trio.SocketStream, end: bytes) -> bytes:
    """Read ``stream`` until what was read ends with ``end`` (``b""``: to its end)."""
    data = b""
    while not (end and data.endswith(end)):
        chunk = await stream.receive_some()
        if not chunk:
            return data
        data += chunk
    return data


class WrittenFrames(trio.abc.Stream):
    """The client's end of a connection, which decodes every message the client
    writes at the moment it hands the bytes to the stream, and reports its frame to
    ``on_frame``, before the bytes go on (so the report precedes anything the other
    end can do about them). Client frames are masked on the wire, hence a parser of
    our own: a passive server-side WebSocket that reads but never answers."""

    def __init__(self, stream: trio.abc.Stream, on_frame: Callable[[dict[str, Any]], None]):
        self._stream = stream
        self._on_frame = on_frame
        self._parser = WSConnection(ConnectionType.SERVER)
        self._text = ""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._parser.receive_data(bytes(data))
        for event in self._parser.events():
            if isinstance(event, Request):
                self._parser.send(AcceptConnection())  # the real answer comes from the fake
            elif isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    self._on_frame(json.loads(self._text))
                    self._text = ""
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def run_voice_chat(
    fake,
    keyboard: Keyboard,
    out: Transcript,
    voice: VoiceSettings,
    stream: trio.abc.Stream | None = None,
) -> int:
    return await run_chat(
        FAKE_URL,
        stdin=keyboard.stdin,
        out=out,
        echo_input=True,
        heartbeat_s=None,
        voice=voice,
        stream=stream or fake.client_stream,
    )


async def test_chat_voice_writes_the_reply_to_a_valid_wav(nursery, autojump_clock, tmp_path):
    fake = start_fake(nursery, session=voice_session_payload())
    keyboard, out = Keyboard(), Transcript()
    options = {}

    async def server_side() -> None:
        await fake.connected.wait()
        request = await fake.recv_type("REQUEST")
        options.update(request["payload"]["options"])
        rid = request["request_id"]
        await fake.stream(rid, 0, "Hello", start_ms=0)
        for seq in range(3):
            await fake.audio(rid, seq, seq * 100, tone(100))
        await fake.done(rid, 1, audio_ms=300, heard_ms=300, heard_text="Hello")

    nursery.start_soon(server_side)
    keyboard.type("say hello\n")
    keyboard.close()
    voice = VoiceSettings(wav=str(tmp_path / "reply-{request_id}.wav"), audio_pace=0)
    assert await run_voice_chat(fake, keyboard, out, voice) == 0
    assert options == {"voice": True, "audio_pace": 0}
    path = tmp_path / "reply-req-1.wav"
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.getnframes() == 3 * 1600
        assert wav.readframes(wav.getnframes()) == tone(100) * 3
    lines = out.lines
    index(lines, r"\[voice builtin \(builtin\), to .*reply-\{request_id\}\.wav\]")
    assert index(lines, "Hello") < index(lines, rf"\[wrote {path} \(0\.30 s\)\]")


async def test_a_barge_in_kills_the_player_and_sends_what_was_played(nursery, tmp_path):
    listener, port = await player_listener()
    fake = start_fake(nursery, session=voice_session_payload())
    keyboard, out = Keyboard(), Transcript()
    seen: dict[str, object] = {}

    async def server_side() -> None:
        await fake.connected.wait()
        request = await fake.recv_type("REQUEST")
        rid = request["request_id"]
        await fake.stream(rid, 0, "Hello", start_ms=0)
        for seq in range(10):
            await fake.audio(rid, seq, seq * 100, tone(100))
        player = await listener.accept()
        seen["pid"] = int(await read_until(player, b"\n"))
        keyboard.type("stop talking\n")  # the barge-in
        interrupt = await fake.recv_type("INTERRUPT")
        seen["played_ms"] = interrupt["payload"]["played_ms"]
        # Killed: its report ends without "eof" (that the kill comes before the
        # INTERRUPT is written is the next test's).
        seen["rest"] = await read_until(player, b"")
        await player.aclose()
        await fake.ack(interrupt["msg_id"], [rid])
        await fake.done(
            rid,
            1,
            "interrupted",
            interrupted=True,
            audio_ms=1000,
            heard_ms=interrupt["payload"]["played_ms"],
            heard_text="Hello",
        )
        second = await fake.recv_type("REQUEST")
        await fake.stream(second["request_id"], 0, "ok")
        await fake.done(second["request_id"], 1)
        keyboard.close()

    nursery.start_soon(server_side)
    keyboard.type("talk to me\n")
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(PLAYER)} {port}"
    voice = VoiceSettings(play=command, wav=str(tmp_path / "cut.wav"))
    with trio.fail_after(20):
        assert await run_voice_chat(fake, keyboard, out, voice) == 0
    await listener.aclose()

    assert seen["rest"] == b""
    with pytest.raises(ProcessLookupError):  # gone, and reaped: no orphan, no zombie
        os.kill(int(seen["pid"]), 0)  # type: ignore[call-overload]
    played = seen["played_ms"]
    assert isinstance(played, int | float)
    assert 0 <= played <= 1000
    lines = out.lines
    assert index(lines, r"Hello \[cut after 1 chunk\]") < index(lines, "> stop talking")
    index(lines, r'\[heard \d\.\d\d s of 1\.00 s: "Hello"\]')
    with wave.open(str(tmp_path / "cut.wav"), "rb") as wav:  # valid after a cut too
        assert wav.getframerate() == 16000
        assert 0 < wav.getnframes() <= 16000


async def test_a_barge_in_kills_the_player_before_the_interrupt_is_written(nursery, monkeypatch):
    """Optimistic interruption: the chat silences itself first, then tells the server.
    Every signal sent to a process and every frame the chat writes is noted, in the
    order it happens; the player's SIGKILL must come before the INTERRUPT's bytes
    reach the socket (the fake answers nothing until then, so nothing from the
    server can have been waited for)."""
    listener, port = await player_listener()
    fake = start_fake(nursery, session=voice_session_payload())
    keyboard, out = Keyboard(), Transcript()
    events: list[str] = []
    player: dict[str, int] = {}

    send_signal = subprocess.Popen.send_signal

    def noted_send_signal(process: subprocess.Popen[bytes], sig: int) -> None:
        who = "player" if process.pid == player.get("pid") else f"pid {process.pid}"
        events.append(f"{signal.Signals(sig).name} to {who}")
        send_signal(process, sig)

    monkeypatch.setattr(subprocess.Popen, "send_signal", noted_send_signal)
    tapped = WrittenFrames(
        fake.client_stream, lambda frame: events.append(f"{frame['msg_type']} written")
    )

    async def server_side() -> None:
        await fake.connected.wait()
        request = await fake.recv_type("REQUEST")
        rid = request["request_id"]
        await fake.stream(rid, 0, "Hello", start_ms=0)
        for seq in range(STALLED_CHUNKS):
            await fake.audio(rid, seq, seq * 100, tone(100))
        report = await listener.accept()
        player["pid"] = int(await read_until(report, b"\n"))
        events.append("player playing")
        # Everything has been read and the player's pipe is full: the chat's audio
        # task waits to write to it, where only a kill or a cancel reaches it (not
        # the local cut of the reply, which ends the audio the task reads).
        await trio.testing.wait_all_tasks_blocked()
        keyboard.type("stop talking\n")  # the barge-in
        interrupt = await fake.recv_type("INTERRUPT")
        await read_until(report, b"")  # the player is gone
        await report.aclose()
        await fake.ack(interrupt["msg_id"], [rid])
        await fake.done(rid, 1, "interrupted", interrupted=True, audio_ms=1000)
        second = await fake.recv_type("REQUEST")
        await fake.done(second["request_id"], 0)
        keyboard.close()

    nursery.start_soon(server_side)
    keyboard.type("talk to me\n")
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(PLAYER)} {port} stall"
    with trio.fail_after(20):
        assert await run_voice_chat(fake, keyboard, out, VoiceSettings(play=command), tapped) == 0
    await listener.aclose()

    # The chat may signal the player twice (the barge-in kills it, then the task
    # that fed it reaps it, killing again if it has not exited): once is enough.
    distinct = [e for i, e in enumerate(events) if not i or e != events[i - 1]]
    written = distinct.index("INTERRUPT written")
    assert distinct[: written + 1] == [
        "REQUEST written",
        "player playing",
        "SIGKILL to player",
        "INTERRUPT written",
    ], events
    # Then the new question, at once.
    assert [e for e in distinct[written + 1 :] if e != "SIGKILL to player"] == [
        "REQUEST written"
    ], events


async def test_a_new_line_silences_a_reply_that_is_still_playing(nursery, tmp_path):
    """The reply has completed (text and audio), the player plays on; /stop kills it
    (the server is done with the reply: it sends no INTERRUPT)."""
    listener, port = await player_listener()
    fake = start_fake(nursery, session=voice_session_payload())
    keyboard, out = Keyboard(), Transcript()
    seen: dict[str, bytes] = {}

    async def server_side() -> None:
        await fake.connected.wait()
        request = await fake.recv_type("REQUEST")
        rid = request["request_id"]
        await fake.stream(rid, 0, "Hi", start_ms=0)
        await fake.audio(rid, 0, 0, tone(100))
        await fake.done(rid, 1, audio_ms=100, heard_ms=100, heard_text="Hi")
        player = await listener.accept()
        report = await read_until(player, b"eof\n")  # it has all the audio, and plays on
        keyboard.type("/stop\n")
        seen["report"] = report + await read_until(player, b"")  # until it is killed
        await player.aclose()
        keyboard.close()

    nursery.start_soon(server_side)
    keyboard.type("hi\n")
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(PLAYER)} {port} linger"
    with trio.fail_after(20):
        assert await run_voice_chat(fake, keyboard, out, VoiceSettings(play=command)) == 0
    await listener.aclose()
    assert seen["report"].endswith(b"eof\n")
    lines = out.lines
    index(lines, "> /stop")
    assert "[nothing to stop]" not in lines  # it was playing: it was stopped


def test_voice_flags():
    parser = build_parser()
    assert voice_settings(parser.parse_args(["chat"])) is None
    alone = voice_settings(parser.parse_args(["chat", "--voice"]))
    assert alone == VoiceSettings(voice=True, wav="trio-agent-{request_id}.wav")
    named = voice_settings(parser.parse_args(["chat", "--voice", "en", "--play", "aplay -q"]))
    assert named == VoiceSettings(voice="en", play="aplay -q")
    paced = voice_settings(parser.parse_args(["chat", "--wav", "a.wav", "--audio-pace", "0"]))
    assert paced == VoiceSettings(voice=True, wav="a.wav", audio_pace=0.0)
    swallowed = parser.parse_args(["chat", "--voice", "ws://example.test/ws"])
    assert voice_settings(swallowed) == VoiceSettings(voice=True, wav="trio-agent-{request_id}.wav")
    assert swallowed.url == "ws://example.test/ws"


def test_player_commands_and_the_streaming_header():
    assert player_argv("aplay -q", 22050, 1) == (["aplay", "-q"], True)
    raw = "aplay -t raw -f S16_LE -r {rate} -c {channels}"
    assert player_argv(raw, 22050, 1) == (
        ["aplay", "-t", "raw", "-f", "S16_LE", "-r", "22050", "-c", "1"],
        False,
    )
    with pytest.raises(ValueError, match="empty"):
        player_argv("  ", 16000, 1)
    header = streaming_wav_header(16000, 1)
    assert len(header) == 44
    assert header[:4] == b"RIFF"
    assert header[8:16] == b"WAVEfmt "
    assert int.from_bytes(header[24:28], "little") == 16000
    assert header[36:40] == b"data"


def test_the_streaming_header_is_a_wav_the_stdlib_reads(tmp_path: Path):
    path = tmp_path / "stream.wav"
    path.write_bytes(streaming_wav_header(16000, 1) + tone(50))
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (16000, 1)
        assert wav.readframes(800) == tone(50)


async def test_chat_voice_against_the_server_writes_what_it_spoke(start_server, tmp_path):
    server = await start_server(speech="builtin")
    keyboard, out = Keyboard(), Transcript()
    keyboard.type("hello there\n")
    keyboard.close()
    wav_path = tmp_path / "{request_id}.wav"
    with trio.fail_after(20):
        status = await run_chat(
            server.url,
            stdin=keyboard.stdin,
            out=out,
            agent="echo",
            echo_input=True,
            heartbeat_s=None,
            voice=VoiceSettings(wav=str(wav_path), audio_pace=0),
        )
    assert status == 0
    lines = out.lines
    assert index(lines, "> hello there") < index(lines, "hello there")
    match = index(lines, r"\[wrote .*req-1\.wav \(\d\.\d\d s\)\]")
    seconds = float(lines[match].rsplit("(", 1)[1].split()[0])
    with wave.open(str(tmp_path / "req-1.wav"), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.getnframes() > 0
        assert wav.getnframes() / 16000 == pytest.approx(seconds, abs=0.005)


async def test_chat_voice_with_a_server_that_cannot_speak(nursery, autojump_clock, capsys):
    """No voices: the chat says so and asks in text; a voice the server lacks is
    refused before anything is asked (exit status 2)."""
    fake = start_fake(nursery)
    keyboard, out = Keyboard(), Transcript()
    options = {}

    async def server_side() -> None:
        await fake.connected.wait()
        request = await fake.recv_type("REQUEST")
        options.update(request["payload"]["options"])
        await fake.stream(request["request_id"], 0, "text only")
        await fake.done(request["request_id"], 1)

    nursery.start_soon(server_side)
    keyboard.type("hi\n")
    keyboard.close()
    assert await run_voice_chat(fake, keyboard, out, VoiceSettings()) == 0
    assert options == {}
    index(out.lines, r"\[the server offers no voices: replies will not be spoken\]")
    index(out.lines, "text only")

    other = start_fake(nursery, session=voice_session_payload())
    assert await run_voice_chat(other, Keyboard(), Transcript(), VoiceSettings(voice="xx")) == 2
    assert "no voice 'xx' here (voices: builtin)" in capsys.readouterr().err


async def test_a_player_that_fails_is_reported(nursery, tmp_path):
    fake = start_fake(nursery, session=voice_session_payload())
    keyboard, out = Keyboard(), Transcript()

    async def server_side() -> None:
        await fake.connected.wait()
        request = await fake.recv_type("REQUEST")
        rid = request["request_id"]
        await fake.stream(rid, 0, "Hi", start_ms=0)
        for seq in range(20):  # more than a pipe holds: the dead player must be noticed
            await fake.audio(rid, seq, seq * 100, tone(100))
        await fake.done(rid, 1, audio_ms=2000, heard_ms=2000, heard_text="Hi")

    nursery.start_soon(server_side)
    keyboard.type("hi\n")
    keyboard.close()
    command = f"{shlex.quote(sys.executable)} -c 'raise SystemExit(3)'"
    with trio.fail_after(20):
        assert await run_voice_chat(fake, keyboard, out, VoiceSettings(play=command)) == 0
    index(out.lines, r"\[the player `.*` exited with status 3\]")
