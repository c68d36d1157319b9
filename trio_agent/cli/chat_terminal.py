"""The chat's plain input and output: the screen it prints to and the input it reads
line by line, for a pipe or a file (a terminal gets :mod:`trio_agent.cli.chat_prompt`).

Used by :mod:`trio_agent.cli.chat`; docs/client.md ("The terminal chat") says how
the chat reads a terminal, a pipe or a file.
"""

from __future__ import annotations

import enum
import os
from typing import Protocol, TextIO

import trio

__all__ = [
    "ChatInput",
    "ChatScreen",
    "Key",
    "LineReader",
    "Screen",
    "TerminalFailed",
    "ThreadedFdReader",
]


class TerminalFailed(Exception):
    """The terminal's prompt could not run; the chat ends with this (exit status 1)."""


class Key(enum.Enum):
    """What a terminal's keys ask for that is not a line."""

    #: Esc: stop the reply, ask nothing.
    STOP = "stop"
    #: Ctrl-C, or Ctrl-D on an empty line: leave now.
    QUIT = "quit"


class ChatScreen(Protocol):
    """Where the chat prints: :class:`Screen` for a pipe, the prompt on a terminal."""

    def reply(self, delta: str) -> None: ...

    def end_reply(self, marker: str = "") -> None: ...

    def line(self, text: str) -> None: ...

    def note(self, text: str) -> None: ...


class ChatInput(Protocol):
    """Where the chat reads: :class:`LineReader` for a pipe, the prompt on a terminal."""

    async def next_line(self) -> str | Key | None:
        """The next line without its end, a :class:`Key`, or ``None`` at the end."""
        ...


class Screen:
    """Everything the chat prints goes through here.

    Several tasks print (replies, ACK notes); each call writes whole pieces
    synchronously, so they never interleave inside a piece. A note that arrives
    while a reply is mid-line starts on a new line.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._mid_line = False

    def reply(self, delta: str) -> None:
        self._write(delta)
        self._mid_line = True

    def end_reply(self, marker: str = "") -> None:
        """End the reply's line, with ``marker`` (like ``[cut ...]``) at its end."""
        if self._mid_line:
            self._write(f" {marker}\n" if marker else "\n")
        elif marker:
            self._write(f"{marker}\n")
        self._mid_line = False

    def line(self, text: str) -> None:
        """Print ``text`` on a line of its own."""
        self._write(("\n" if self._mid_line else "") + text + "\n")
        self._mid_line = False

    def note(self, text: str) -> None:
        self.line(f"[{text}]")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class LineReader:
    """Splits a byte stream into lines (UTF-8, undecodable bytes replaced)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._eof = False

    async def next_line(self) -> str | None:
        """The next line without its end, or ``None`` at the end of the input."""
        while b"\n" not in self._buffer and not self._eof:
            data = await self._stream.receive_some()
            if data:
                self._buffer += data
            else:
                self._eof = True
        if b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
        elif self._buffer:
            raw, self._buffer = self._buffer, b""
        else:
            return None
        return raw.decode("utf-8", errors="replace").rstrip("\r")


class ThreadedFdReader(trio.abc.ReceiveStream):
    """Reads a file descriptor in a worker thread.

    Works the same for a terminal, a pipe and a file, and never switches the
    descriptor to non-blocking mode (which a terminal shares with stdout and
    stderr). A cancelled read abandons its thread, which returns at the next input
    or when the process exits.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await trio.to_thread.run_sync(
            os.read, self._fd, max_bytes or 65536, abandon_on_cancel=True
        )

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
