"""Name the task that froze the server: a Trio instrument that times task steps.

:class:`BlockingTaskMonitor` logs a WARNING, in the culprit's own context, for a
step longer than the threshold. ``docs/cancellation.md`` (pitfalls) explains why;
``docs/performance.md`` (tuning the hot path) what it costs per step.
"""

from __future__ import annotations

import time

import trio
from loguru import logger

#: How often (a fraction of the threshold) the thread's CPU clock is read: see
#: :class:`BlockingTaskMonitor`.
CPU_MARK_FRACTION = 0.1


class BlockingTaskMonitor(trio.abc.Instrument):
    """Log a warning when one task step runs longer than ``threshold_s``.

    Install with ``trio.lowlevel.add_instrument(monitor)`` or run
    :func:`report_blocking_tasks` in a nursery.

    It runs on every task step, so it must be cheap: two reads of Trio's clock
    (``perf_counter``, no system call) per step. The step's CPU time (``cpu_s``,
    which tells a computation from a blocking call) needs the thread's CPU
    clock, a real system call that costs more than a whole task step, so it is
    not read per step: a *mark* is taken at most every ``CPU_MARK_FRACTION *
    threshold_s`` of wall time, and a slow step's ``cpu_s`` is the CPU used
    since the last mark before it began. That overstates it by at most a tenth
    of the threshold, which does not change what it says (close to
    ``blocked_s``: a computation; near zero: a blocking call).
    """

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        #: When the current step began; None outside a step (and during the step
        #: that installs the instrument, which began before it could be timed).
        self._step_started: float | None = None
        self._cpu_mark = 0.0
        self._next_cpu_mark = float("-inf")
        self._cpu_mark_every = threshold_s * CPU_MARK_FRACTION
        #: How many over-long steps were seen.
        self.warnings = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = self._step_started = trio.current_time()
        if now >= self._next_cpu_mark:
            self._cpu_mark = time.thread_time()
            self._next_cpu_mark = now + self._cpu_mark_every

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        started = self._step_started
        if started is None:
            return
        took = trio.current_time() - started
        self._step_started = None
        if took >= self.threshold_s:
            self.warnings += 1
            task.context.run(
                logger.warning,
                "a task ran without a checkpoint, freezing every session meanwhile",
                task=task.name,
                blocked_s=round(took, 3),
                cpu_s=round(time.thread_time() - self._cpu_mark, 3),
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
