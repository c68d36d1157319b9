"""Structured logging through loguru.

Every line carries ``session_id`` and, inside a request, ``request_id``. The
library installs no sink on import; the command line calls :func:`configure_logging`.
``docs/architecture.md`` explains the design.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from loguru import logger

#: How log lines are written: coloured text for people, or one JSON object per line.
LogFormat = Literal["text", "json"]

#: The most characters of one client-supplied value a log line (or a trace event)
#: holds; the rest is cut and its length said (docs/security.md, "Secrets and logs").
LOG_VALUE_CHARS: Final = 200
#: Lines of one kind of event one session may log per window; the rest are counted
#: and told in one summary line.
LOG_LINES_PER_WINDOW: Final = 20
LOG_WINDOW_S: Final = 10.0


def clip(value: str, limit: int = LOG_VALUE_CHARS) -> str:
    """``value``, cut to ``limit`` characters with the cut marked: ``…(+N chars)``.

    For every value a client chose (ids, reasons, details quoting its frame), so
    that one frame can never write more than a few hundred bytes to the log.
    """
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…(+{len(value) - limit} chars)"


def clip_value(value: Any, limit: int = LOG_VALUE_CHARS) -> Any:
    """:func:`clip` applied to a string, or to the strings of a list or tuple (which
    is also cut to ``limit`` items); anything else as it is."""
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, list | tuple):
        items = [clip_value(item, limit) for item in value[:limit]]
        if len(value) > limit:
            items.append(f"…(+{len(value) - limit} items)")
        elif all(a is b for a, b in zip(items, value, strict=True)):
            return value  # nothing was cut: the very same object
        return items
    return value


@dataclass(slots=True)
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


class LogBudget:
    """How many lines of each event one session may log: a window per event.

    Pure: the caller passes the time. :meth:`allow` says whether to log this line,
    and how many lines of the same event the window that just ended suppressed
    (to be told in one summary line); :meth:`remaining` gives what is still untold
    when the session ends.

    :param per_window: lines of one event logged per window.
    :param window_s: the window's length in seconds.
    """

    __slots__ = ("_windows", "per_window", "window_s")

    def __init__(
        self, per_window: int = LOG_LINES_PER_WINDOW, window_s: float = LOG_WINDOW_S
    ) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}

    def allow(self, event: str, now: float) -> tuple[bool, int]:
        """Whether to log one line of ``event`` at ``now``, and how many lines of it the
        previous window suppressed (0 if none, or if that was told already)."""
        window = self._windows.get(event)
        told = 0
        if window is None or now - window.started >= self.window_s:
            told = window.suppressed if window is not None else 0
            window = self._windows[event] = _Window(now)
        if window.logged < self.per_window:
            window.logged += 1
            return True, told
        window.suppressed += 1
        return False, told

    def remaining(self) -> Iterator[tuple[str, int]]:
        """Each event with lines suppressed and not yet told; forgets them."""
        for event, window in self._windows.items():
            if window.suppressed:
                yield event, window.suppressed
                window.suppressed = 0


_TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[session_id]}</cyan>{extra[request_tag]} {message}{extra[fields]}"
)


def _clip_extra(record: dict) -> None:  # type: ignore[type-arg]
    """Every field of every line cut to :data:`LOG_VALUE_CHARS`, whichever module
    logged it: the last guard against a client's string filling the disk."""
    extra = record["extra"]
    for key, value in extra.items():
        extra[key] = clip_value(value)


def _patch(record: dict) -> None:  # type: ignore[type-arg]
    _clip_extra(record)
    extra = record["extra"]
    extra.setdefault("session_id", "-")
    request_id = extra.get("request_id")
    extra["request_tag"] = f" [{request_id}]" if request_id else ""
    # A field that is None (no reason, no close code) says nothing: it is left out
    # of the text line. The JSON format keeps it as null, so its keys stay the same.
    shown = {
        k: v
        for k, v in extra.items()
        if v is not None and k not in {"session_id", "request_id", "request_tag", "fields"}
    }
    extra["fields"] = "".join(f" {k}={v}" for k, v in shown.items())


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send logs to stderr as coloured text or as one JSON object per line."""
    logger.remove()
    # diagnose=False: tracebacks never show the values of local variables, which
    # could hold a request's headers or the server's token.
    if fmt == "json":
        logger.configure(patcher=_clip_extra)  # type: ignore[arg-type]
        logger.add(sys.stderr, level=level.upper(), serialize=True, enqueue=False, diagnose=False)
    else:
        logger.configure(patcher=_patch)  # type: ignore[arg-type]
        logger.add(
            sys.stderr, level=level.upper(), format=_TEXT_FORMAT, colorize=None, diagnose=False
        )
