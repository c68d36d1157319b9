"""Where a spoken reply goes on the Python side: a WAV file, or a player process.

``trio-agent chat --voice`` hands each reply's :class:`~trio_agent.client.state.AudioChunk`
values to one or more :class:`Sink` (:class:`WavFileSink`, :class:`PlayerSink`).
A player is also the reply's playback clock (:meth:`PlayerSink.played_ms`).
:meth:`Sink.abort` is the barge-in: shielded and bounded (``REAP_TIMEOUT_S``), so no
player outlives its reply. docs/client.md ("chat --voice") describes it.
"""

from __future__ import annotations

import shlex
import struct
import subprocess
import wave
from pathlib import Path
from typing import Final, Protocol

import trio

from trio_agent.client.state import AudioChunk
from trio_agent.protocol.audio import SAMPLE_BYTES

#: How long reaping a killed player, or closing a WAV file, may take.
REAP_TIMEOUT_S: Final = 2.0
#: The RIFF and data sizes of a WAV stream whose length is not known in advance:
#: players read to the end of the pipe (the convention of ``arecord`` and ``sox``).
_UNKNOWN_SIZE: Final = 0xFFFFFFFF


class Sink(Protocol):
    """Where the audio of one reply goes."""

    async def write(self, chunk: AudioChunk) -> None:
        """Take the next chunk (in order)."""

    async def finish(self) -> None:
        """The reply's audio is complete: end normally (a player plays to the end)."""

    async def abort(self) -> None:
        """Barge-in: stop now. Bounded and safe to call when cancelled, and twice."""


def streaming_wav_header(sample_rate: int, channels: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV stream of unknown length."""
    block = channels * SAMPLE_BYTES
    return b"".join(
        (
            b"RIFF",
            struct.pack("<I", _UNKNOWN_SIZE),
            b"WAVEfmt ",
            struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16),
            b"data",
            struct.pack("<I", _UNKNOWN_SIZE - 36),
        )
    )


def player_argv(command: str, sample_rate: int, channels: int) -> tuple[list[str], bool]:
    """Split ``command`` into an argv; return it and whether the player wants a WAV
    header (``False`` when the command names ``{rate}`` or ``{channels}``, which then
    stand for the audio's sample rate and channel count, so it reads raw samples)."""
    argv = shlex.split(command)
    if not argv:
        raise ValueError("the player command is empty")
    raw = any("{rate}" in part or "{channels}" in part for part in argv)
    rate, count = str(sample_rate), str(channels)
    return [part.replace("{rate}", rate).replace("{channels}", count) for part in argv], not raw


class WavFileSink:
    """Writes one reply to a WAV file, opened at the first chunk (whose sample rate
    and channel count it takes). Writes happen in a worker thread, so a slow disk
    never stalls the event loop; the header's sizes are right once it is closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wav: wave.Wave_write | None = None
        self._closed = False
        #: Milliseconds of audio written.
        self.written_ms = 0.0

    async def write(self, chunk: AudioChunk) -> None:
        if self._closed:
            return
        if self._wav is None:
            self._wav = await trio.to_thread.run_sync(self._open, chunk)
        await trio.to_thread.run_sync(self._wav.writeframes, chunk.samples)
        self.written_ms += chunk.duration_ms

    def _open(self, chunk: AudioChunk) -> wave.Wave_write:
        wav = wave.open(str(self.path), "wb")  # noqa: SIM115  # closed by finish/abort
        wav.setnchannels(chunk.channels)
        wav.setsampwidth(SAMPLE_BYTES)
        wav.setframerate(chunk.sample_rate)
        return wav

    async def finish(self) -> None:
        await self._close()

    async def abort(self) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        wav, self._wav = self._wav, None
        if wav is not None:
            with trio.move_on_after(REAP_TIMEOUT_S, shield=True):
                await trio.to_thread.run_sync(wav.close)


class PlayerSink:
    """Plays one reply through a command, started at the first chunk.

    The samples go to the player's stdin; a full pipe makes :meth:`write` wait, so
    the chat takes audio about as fast as the player plays it. Its stdout and
    stderr are discarded (they would mix with the chat's screen).
    """

    def __init__(self, command: str) -> None:
        self.command = command
        self.process: trio.Process | None = None
        self._started_at: float | None = None
        self._written_ms = 0.0
        self._halted_at: float | None = None
        self._killed = False
        #: The player closed its stdin (it quit, or is quitting, on its own).
        self._quit = False
        self._ended = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def failure(self) -> int | None:
        """The player's exit status when it ended on its own with an error (a
        missing audio device, a bad command line), else ``None``."""
        process = self.process
        if process is None or self._killed or process.returncode in (None, 0):
            return None
        return process.returncode

    @property
    def running(self) -> bool:
        """The player has been started and has not exited (nor been killed) yet."""
        return self.process is not None and self.process.returncode is None

    def played_ms(self) -> float:
        """Wall time since the first samples went to the player, capped by the
        audio written to it: the best a client can know of what was heard."""
        if self._started_at is None:
            return 0.0
        until = self._halted_at if self._halted_at is not None else trio.current_time()
        return min(max(0.0, (until - self._started_at) * 1000), self._written_ms)

    async def write(self, chunk: AudioChunk) -> None:
        if self._ended:
            return
        if self.process is None:
            argv, wants_header = player_argv(self.command, chunk.sample_rate, chunk.channels)
            self.process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if wants_header:
                await self._send(streaming_wav_header(chunk.sample_rate, chunk.channels))
        if self._started_at is None:
            self._started_at = trio.current_time()
        await self._send(chunk.samples)
        self._written_ms += chunk.duration_ms

    async def _send(self, data: bytes) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._ended = self._quit = True  # the player quit on its own: nothing more to play

    async def finish(self) -> None:
        """Close the player's stdin and wait for it to play what it has. A barge-in
        during the wait cancels it, and :meth:`abort` then kills the player."""
        if self._ended or self.process is None:
            return
        assert self.process.stdin is not None
        with trio.move_on_after(REAP_TIMEOUT_S, shield=True):
            await self.process.stdin.aclose()
        await self.process.wait()
        self._ended = True

    def halt(self) -> None:
        """Barge-in, synchronously: stop the clock and kill the player now. Call
        :meth:`abort` afterwards (from the task that owns the sink) to reap it."""
        if self._halted_at is None:
            self._halted_at = trio.current_time()
        self._ended = True
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            self._killed = True

    async def abort(self) -> None:
        """Kill the player at once, then reap it (shielded, bounded). A player that
        quit on its own first gets the time to exit, so its status is its own."""
        process = self.process
        if self._quit and process is not None and not self._killed:
            with trio.move_on_after(REAP_TIMEOUT_S, shield=True):
                await process.wait()
        self.halt()
        if process is None:
            return
        with trio.move_on_after(REAP_TIMEOUT_S, shield=True):
            await process.wait()
            if process.stdin is not None:
                await process.stdin.aclose()
