"""A program in a pseudo-terminal, and what its terminal would show.

:class:`VtScreen` is a small terminal: it applies the output bytes (text, CR/LF,
the cursor and erase sequences prompt_toolkit writes) to a grid of rows, so a test
asserts on the screen a user would see, not on the byte stream. A sequence it does
not know fails the test loudly instead of being skipped silently.

:class:`PtyProgram` runs the program with pexpect; each wait reads its output
until the screen shows what the test waits for (no sleeps), with a generous
deadline for a loaded machine. Its methods block: call them from a worker thread
when the server runs in the test's own Trio run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence

import pexpect

CSI = re.compile(r"\x1b\[([?]?)([0-9;]*)([ -/]*)([@-~])")
OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")
SHORT = re.compile(r"\x1b([=>78]|[()][0-9A-Z])")
UNFINISHED = re.compile(r"\x1b(\[[?]?[0-9;]*[ -/]*|\][^\x07\x1b]*|[()])?")


class VtScreen:
    """Rows of text with a cursor; what scrolls off the top is kept in
    :attr:`scrolled`. Knows what prompt_toolkit writes, and no more."""

    def __init__(self, rows: int, columns: int) -> None:
        self.rows_count, self.columns = rows, columns
        self.grid = [[" "] * columns for _ in range(rows)]
        self.scrolled: list[str] = []
        self.row = self.column = 0
        self.autowrap = True
        self._wrap_pending = False
        self._partial = ""

    @property
    def rows(self) -> list[str]:
        return ["".join(cells).rstrip() for cells in self.grid]

    @property
    def lines(self) -> list[str]:
        """Everything shown, the scrolled-off lines first, without trailing blank rows."""
        lines = self.scrolled + self.rows
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def feed(self, text: str) -> None:
        text = self._partial + text
        self._partial = ""
        i = 0
        while i < len(text):
            char = text[i]
            if char == "\x1b":
                match = CSI.match(text, i) or OSC.match(text, i)
                if match is None:
                    if UNFINISHED.fullmatch(text, i):
                        self._partial = text[i:]  # the rest comes with the next read
                        return
                    if (short := SHORT.match(text, i)) is not None:
                        i = short.end()  # keypad modes, charsets: nothing to draw
                        continue
                    raise AssertionError(f"unknown escape sequence {text[i : i + 12]!r}")
                if match.re is CSI:
                    self._csi(*match.groups())
                i = match.end()
                continue
            if char == "\r":
                self.column, self._wrap_pending = 0, False
            elif char == "\n":
                self._line_feed()
            elif char == "\b":
                self.column, self._wrap_pending = max(self.column - 1, 0), False
            elif char == "\x07":
                pass
            elif char >= " ":
                self._put(char)
            i += 1

    def _put(self, char: str) -> None:
        if self._wrap_pending:
            self.column, self._wrap_pending = 0, False
            self._line_feed()
        self.grid[self.row][self.column] = char
        if self.column == self.columns - 1:
            self._wrap_pending = self.autowrap
        else:
            self.column += 1

    def _line_feed(self) -> None:
        self._wrap_pending = False
        if self.row == self.rows_count - 1:
            self.scrolled.append("".join(self.grid.pop(0)).rstrip())
            self.grid.append([" "] * self.columns)
        else:
            self.row += 1

    def _csi(self, private: str, params: str, _intermediate: str, final: str) -> None:
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []
        count = max(numbers[0], 1) if numbers else 1
        self._wrap_pending = False
        if private == "?":
            if final in "hl" and 7 in numbers:
                self.autowrap = final == "h"
            return  # cursor visibility, bracketed paste, cursor keys: nothing to draw
        if final == "A":
            self.row = max(self.row - count, 0)
        elif final == "B":
            self.row = min(self.row + count, self.rows_count - 1)
        elif final == "C":
            self.column = min(self.column + count, self.columns - 1)
        elif final == "D":
            self.column = max(self.column - count, 0)
        elif final == "G":
            self.column = min(count - 1, self.columns - 1)
        elif final in "Hf":
            row, column = [*numbers, 1, 1][:2]
            self.row = min(max(row, 1), self.rows_count) - 1
            self.column = min(max(column, 1), self.columns) - 1
        elif final == "J":
            mode = numbers[0] if numbers else 0
            if mode == 0:
                self._erase_line_from(self.column)
                for row in range(self.row + 1, self.rows_count):
                    self.grid[row] = [" "] * self.columns
            elif mode == 2:
                self.grid = [[" "] * self.columns for _ in range(self.rows_count)]
            else:
                raise AssertionError(f"unknown erase mode {mode}")
        elif final == "K":
            mode = numbers[0] if numbers else 0
            if mode == 0:
                self._erase_line_from(self.column)
            elif mode == 2:
                self.grid[self.row] = [" "] * self.columns
            else:
                self.grid[self.row][: self.column + 1] = [" "] * (self.column + 1)
        elif final in "mq":
            pass  # colours and attributes; the cursor's shape
        elif final == "n":
            pass  # a cursor position request: this terminal does not answer
        else:
            raise AssertionError(f"unknown CSI sequence {private}{params}{final}")

    def _erase_line_from(self, column: int) -> None:
        self.grid[self.row][column:] = [" "] * (self.columns - column)


class PtyProgram:
    """A program in a pseudo-terminal of ``rows`` x ``columns``, its output drawn on
    a :class:`VtScreen`; :attr:`raw` keeps every byte it wrote."""

    def __init__(self, argv: Sequence[str], *, rows: int = 30, columns: int = 160) -> None:
        env = {
            **os.environ,
            "TERM": "xterm",
            # Nobody answers "where is the cursor?" here: do not ask.
            "PROMPT_TOOLKIT_NO_CPR": "1",
            "COLUMNS": str(columns),
            "LINES": str(rows),
        }
        self.child = pexpect.spawn(
            argv[0], list(argv[1:]), env=env, dimensions=(rows, columns), encoding="utf-8"
        )
        # pexpect waits 50 ms before each send by default; the keys go at once here.
        self.child.delaybeforesend = None
        self.screen = VtScreen(rows, columns)
        self.raw = ""
        self.ended = False

    def send(self, text: str) -> None:
        self.child.send(text)

    def read_some(self, timeout: float) -> None:
        """Draw what the program writes within ``timeout`` s (at least one read)."""
        try:
            data = self.child.read_nonblocking(65536, timeout=max(timeout, 0.001))
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.ended = True
            return
        self.raw += data
        self.screen.feed(data)

    def wait_for(
        self, seen: Callable[[VtScreen], bool], what: str, timeout: float = 30.0
    ) -> VtScreen:
        """Read until ``seen(screen)``; fail with the screen after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not seen(self.screen):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                shown = "\n".join(self.screen.lines)
                raise AssertionError(f"never saw {what}; the screen:\n{shown}")
            self.read_some(min(remaining, 1.0))
        return self.screen

    def wait_for_text(self, pattern: str, timeout: float = 30.0) -> VtScreen:
        """Read until a line of the screen matches ``pattern`` (a regular expression)."""
        compiled = re.compile(pattern)
        return self.wait_for(
            lambda screen: any(compiled.search(line) for line in screen.lines),
            repr(pattern),
            timeout,
        )

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()
