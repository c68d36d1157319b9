"""Name the task that froze the server: a Trio instrument that times task steps.

:class:`BlockingTaskMonitor` logs a WARNING, in the culprit's own context, for a
step longer than the threshold. ``docs/cancellation.md`` (pitfalls) explains why.
"""

from __future__ import annotations

import time

import trio
from loguru import logger


class BlockingTaskMonitor(trio.abc.Instrument):
    """Log a warning when one task step runs longer than ``threshold_s``.

    Install with ``trio.lowlevel.add_instrument(monitor)`` or run
    :func:`report_blocking_tasks` in a nursery; costs two clock reads per task step.
    """

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        #: When the current step began; None outside a step (and during the step
        #: that installs the instrument, which began before it could be timed).
        self._step_started: float | None = None
        self._step_cpu_started = 0.0
        #: How many over-long steps were seen.
        self.warnings = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_started = trio.current_time()
        self._step_cpu_started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._step_started is None:
            return
        took = trio.current_time() - self._step_started
        self._step_started = None
        if took >= self.threshold_s:
            self.warnings += 1
            task.context.run(
                logger.warning,
                "a task ran without a checkpoint, freezing every session meanwhile",
                task=task.name,
                blocked_s=round(took, 3),
                cpu_s=round(time.thread_time() - self._step_cpu_started, 3),
            )


async def report_blocking_tasks(threshold_s: float) -> None:
    """Run a :class:`BlockingTaskMonitor` for as long as this task lives.

    Start it in a nursery; cancelling it (or its nursery) removes the instrument.
    """
    monitor = BlockingTaskMonitor(threshold_s)
    trio.lowlevel.add_instrument(monitor)
    try:
        await trio.sleep_forever()
    finally:
        trio.lowlevel.remove_instrument(monitor)
