"""The chat on a terminal: an input line that stays at the bottom, with its prompt,
while the replies stream above it.

The line editing is prompt_toolkit's (history on the arrow keys, the usual Emacs
keys, wide characters, resizes), not terminal handling written here. prompt_toolkit
runs on asyncio, the chat on Trio; they run side by side: Trio keeps the main
thread (its signal handling, Ctrl-C from ``kill -INT``, the connection), and
prompt_toolkit runs in a thread of its own with its own asyncio loop, which is how
its ``PromptSession.prompt_async`` is meant to run. They meet at two narrow points:

- what is typed goes to Trio through a memory channel, fed with
  :meth:`trio.lowlevel.TrioToken.run_sync_soon` (thread-safe, in order);
- what the chat prints goes to the prompt's loop with
  ``loop.call_soon_threadsafe`` (thread-safe, in order), where whole lines are
  printed above the prompt with prompt_toolkit's ``run_in_terminal`` and the
  reply's unfinished line is drawn in the prompt's own area, just above the input.

The unfinished line is the reason this is not ``patch_stdout``: its proxy holds
text until a newline (a streamed reply would show line by line), and when flushed
mid-line the prompt is redrawn after the half line, so the typed keys land inside
the reply. Here the unfinished line is part of the prompt's drawing, and only
whole lines go to the scrollback. docs/client.md ("The terminal chat") describes it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Final

import trio
from prompt_toolkit import PromptSession
from prompt_toolkit.application import in_terminal
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.utils import get_cwidth

from trio_agent.cli.chat_terminal import Key

__all__ = ["PROMPT", "LiveLine", "TerminalPrompt", "open_terminal_prompt"]

PROMPT: Final = "> "
#: How long a lone Esc waits for the rest of an escape sequence (an arrow key
#: sends ESC [ A) before it counts as Esc. prompt_toolkit's default is 0.5 s.
ESCAPE_WAIT_S: Final = 0.05
#: How long leaving waits for the prompt's thread to give the terminal back.
#: It returns within milliseconds; the bound is for a thread that is stuck.
STOP_TIMEOUT_S: Final = 1.0


class LiveLine:
    """A reply's unfinished last line, kept narrower than the terminal.

    What no longer fits on it becomes whole lines, broken at a space where there
    is one, so the line drawn above the prompt never wraps and the prompt never
    moves down while a long reply streams.
    """

    def __init__(self) -> None:
        self.text = ""

    def add(self, delta: str, width: int) -> list[str]:
        """Add ``delta``; return the lines it finished (oldest first)."""
        *finished, rest = (self.text + delta).split("\n")
        limit = max(width - 1, 8)
        while get_cwidth(rest) > limit:
            cut = _fitting(rest, limit)
            space = rest.rfind(" ", 0, cut + 1)
            if space > 0:
                finished.append(rest[:space])
                rest = rest[space + 1 :]
            else:
                finished.append(rest[:cut])
                rest = rest[cut:]
        self.text = rest
        return finished


def _fitting(text: str, cells: int) -> int:
    """How many characters of ``text`` fit in ``cells`` terminal cells."""
    used = 0
    for index, char in enumerate(text):
        used += get_cwidth(char)
        if used > cells:
            return max(index, 1)
    return len(text)


class TerminalPrompt:
    """The terminal side of the chat: its input (:meth:`next_line`) and its screen
    (:meth:`reply`, :meth:`end_reply`, :meth:`line`, :meth:`note`).

    Open it with :func:`open_terminal_prompt`. The screen methods may be called
    from Trio at any time; they only queue the change for the prompt's loop, in
    order, and never block.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._send, self._receive = trio.open_memory_channel[str | Key](math.inf)
        self.started = trio.Event()
        self.finished = trio.Event()
        #: Why the prompt could not run (it then reads as the end of the input).
        self.failure: BaseException | None = None
        # The rest belongs to the prompt's thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._session: PromptSession[str] | None = None
        self._live = LiveLine()
        self._mid_line = False
        self._pending: list[str] = []
        self._flush_scheduled = False
        self._flushing: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ Trio side

    async def next_line(self) -> str | Key | None:
        """The next line typed (without its end), a :class:`Key`, or ``None`` once
        the prompt has ended."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            return None

    def reply(self, delta: str) -> None:
        self._post(self._add_reply, delta)

    def end_reply(self, marker: str = "") -> None:
        """End the reply's line, with ``marker`` (like ``[cut ...]``) at its end."""
        self._post(self._end_reply, marker)

    def line(self, text: str) -> None:
        """Print ``text`` on a line of its own, above the prompt."""
        self._post(self._add_line, text)

    def note(self, text: str) -> None:
        self.line(f"[{text}]")

    def stop(self) -> None:
        """Ask the prompt to end: after what is queued is printed, the input line
        goes, the terminal is given back and the thread ends (:attr:`finished`)."""
        self._post(self._request_stop)

    def _post(self, function: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        with suppress(RuntimeError):  # the loop has closed: nothing is drawn any more
            loop.call_soon_threadsafe(function, *args)

    def _to_trio(self, function: Callable[[], None]) -> None:
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(function)

    def _deliver(self, item: str | Key) -> None:
        def send() -> None:
            with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                self._send.send_nowait(item)

        self._to_trio(send)

    # ---------------------------------------------------------- the prompt's thread

    def run_thread(self) -> None:
        """The thread's body: the prompt's own asyncio loop, until :meth:`stop`."""
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to Trio, which ends the chat
            self.failure = exc
        finally:
            self._to_trio(self._send.close)
            self._to_trio(self.started.set)
            self._to_trio(self.finished.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._session = PromptSession(
            message=self._message,
            history=InMemoryHistory(),
            key_bindings=self._keys(),
            # The accepted line is erased; the chat prints it back above (``> ...``)
            # after the cut reply, so the transcript reads in order.
            erase_when_done=True,
        )
        self._session.app.ttimeoutlen = ESCAPE_WAIT_S
        self._to_trio(self.started.set)
        prompting = asyncio.ensure_future(self._prompt_lines())
        try:
            await self._stop_requested.wait()
        finally:
            prompting.cancel()
            with suppress(asyncio.CancelledError):
                await prompting
            self._flush_pending(final=True)

    async def _prompt_lines(self) -> None:
        """Prompt for line after line. Ctrl-C (a key: the terminal is in raw mode)
        and Ctrl-D on an empty line leave; the prompt is gone, and the terminal
        restored, before Trio hears of it."""
        assert self._session is not None
        while True:
            try:
                line = await self._session.prompt_async()
            except (KeyboardInterrupt, EOFError):
                self._deliver(Key.QUIT)
                return
            except Exception as exc:  # the chat ends, and says why
                self.failure = exc
                self._deliver(Key.QUIT)
                return
            self._deliver(line)

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()

        @keys.add("escape", eager=True)
        def _stop(event: KeyPressEvent) -> None:
            """Esc stops the reply and keeps what is being typed."""
            self._deliver(Key.STOP)

        return keys

    def _request_stop(self) -> None:
        assert self._stop_requested is not None
        self._stop_requested.set()

    def _message(self) -> FormattedText:
        """The prompt, under the lines not yet printed and the reply's unfinished line."""
        above = [*self._pending, self._live.text] if self._live.text else self._pending
        if not above:
            return FormattedText([("class:prompt", PROMPT)])
        return FormattedText([("", "\n".join(above) + "\n"), ("class:prompt", PROMPT)])

    def _add_reply(self, delta: str) -> None:
        self._mid_line = True
        self._pending.extend(self._live.add(delta, self._width()))
        self._changed()

    def _end_reply(self, marker: str) -> None:
        if self._mid_line:
            text = self._live.text
            if text and marker and get_cwidth(f"{text} {marker}") >= self._width():
                self._pending.append(text)  # the marker whole on the next line
                text = ""
            ended = " ".join(part for part in (text, marker) if part)
            if ended:
                self._pending.append(ended)
        elif marker:
            self._pending.append(marker)
        self._live.text, self._mid_line = "", False
        self._changed()

    def _add_line(self, text: str) -> None:
        if self._mid_line and self._live.text:
            self._pending.append(self._live.text)
        self._live.text, self._mid_line = "", False
        self._pending.append(text)
        self._changed()

    def _width(self) -> int:
        assert self._session is not None
        return self._session.output.get_size().columns

    def _changed(self) -> None:
        """Redraw the prompt's area; print the whole lines above it, once the prompt
        has been erased (``run_in_terminal``), so nothing is drawn twice."""
        assert self._session is not None
        app = self._session.app
        if app.is_running:
            app.invalidate()
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            # A task of its own, not one of the application's: those are cancelled
            # when a prompt is accepted, and these lines must still be printed.
            task = asyncio.ensure_future(self._flush_above_prompt())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush_above_prompt(self) -> None:
        try:
            async with in_terminal():
                self._flush_pending(final=False)
        finally:
            self._flush_scheduled = False
            if self._pending:
                self._changed()

    def _flush_pending(self, *, final: bool) -> None:
        """Print the whole lines (and, at the end, the unfinished one) as they are:
        ``Output.write`` turns escape characters from the server into ``?``."""
        assert self._session is not None
        lines, self._pending = self._pending, []
        if final and self._live.text:
            lines.append(self._live.text)
            self._live.text, self._mid_line = "", False
        if lines:
            output = self._session.output
            output.write("".join(f"{line}\n" for line in lines))
            output.flush()


@asynccontextmanager
async def open_terminal_prompt() -> AsyncIterator[TerminalPrompt]:
    """Run the prompt in its own thread for the block.

    Cancellation: leaving the block (however it ends) asks the prompt to end and
    waits for its thread, shielded and bounded (:data:`STOP_TIMEOUT_S`), so the
    terminal is given back before the chat prints its last line or exits.
    """
    prompt = TerminalPrompt(trio.lowlevel.current_trio_token())
    thread = threading.Thread(target=prompt.run_thread, name="trio-agent chat prompt", daemon=True)
    thread.start()
    try:
        await prompt.started.wait()
        yield prompt
    finally:
        prompt.stop()
        with trio.move_on_after(STOP_TIMEOUT_S, shield=True):
            await prompt.finished.wait()
