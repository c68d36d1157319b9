"""The accept loop: :func:`trio.serve_listeners`, with a back-off that stays quiet.

When the process runs out of file descriptors, ``accept()`` fails with ``EMFILE``
until a connection closes. Trio's own loop logs an error with a traceback and
retries every 100 ms: ten lines a second, for as long as the overload lasts, which
fills a disk as surely as it tells anyone anything. This loop backs off (100 ms,
doubling up to 1 s; back to the start after an accept succeeds) and logs at most
one line per second, with the count of failures since the last line.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import trio
from loguru import logger

#: What accept(2) returns when the system is out of a resource, not broken: wait
#: and try again (the same set as trio.serve_listeners).
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: The first wait after a failed accept, in seconds; it doubles on each failure.
FIRST_BACKOFF_S: Final = 0.1
#: The longest wait between two accepts while they fail.
MAX_BACKOFF_S: Final = 1.0
#: At most one log line per this many seconds while accepts fail.
LOG_INTERVAL_S: Final = 1.0

Handler = Callable[[trio.abc.Stream], Awaitable[object]]


class AcceptBackoff:
    """How long to wait after a failed accept, and when to say so. No I/O.

    :meth:`failed` returns the wait and, at most once per :data:`LOG_INTERVAL_S`,
    the number of failures to report (the first failure is reported at once);
    :meth:`succeeded` starts over and returns the failures not yet reported.
    """

    def __init__(self) -> None:
        self.delay = 0.0
        self.unreported = 0
        self._last_report = -math.inf

    def failed(self, now: float) -> tuple[float, int | None]:
        self.delay = min(MAX_BACKOFF_S, self.delay * 2 or FIRST_BACKOFF_S)
        self.unreported += 1
        if now - self._last_report < LOG_INTERVAL_S:
            return self.delay, None
        self._last_report = now
        report, self.unreported = self.unreported, 0
        return self.delay, report

    def succeeded(self) -> int:
        self.delay = 0.0
        report, self.unreported = self.unreported, 0
        return report


async def serve_listeners(
    handler: Handler,
    listeners: list[trio.abc.Listener[trio.abc.Stream]],
    *,
    handler_nursery: trio.Nursery,
    task_status: trio.TaskStatus[
        list[trio.abc.Listener[trio.abc.Stream]]
    ] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept on every listener and run ``handler(stream)`` in ``handler_nursery`` for each
    connection, as :func:`trio.serve_listeners` does (it closes the listeners, and each
    stream after its handler), but back off and log sparingly when accepts fail for
    lack of resources. Other accept errors propagate. Runs until cancelled."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_serve_one, listener, handler, handler_nursery)
        task_status.started(listeners)
        await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def _serve_one(
    listener: trio.abc.Listener[trio.abc.Stream], handler: Handler, handler_nursery: trio.Nursery
) -> None:
    backoff = AcceptBackoff()
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                delay, report = backoff.failed(trio.current_time())
                if report is not None:
                    logger.warning(
                        "accept failed: {}; backing off",
                        f"{errno.errorcode[exc.errno]} ({os.strerror(exc.errno)})",
                        failures=report,
                        retry_in_s=delay,
                    )
                await trio.sleep(delay)
                continue
            missed = backoff.succeeded()
            if missed:
                logger.info("accepting again", failures_since_last_report=missed)
            handler_nursery.start_soon(_run_handler, stream, handler)


async def _run_handler(stream: trio.abc.Stream, handler: Handler) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)
