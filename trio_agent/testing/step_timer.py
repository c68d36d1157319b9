"""How long the agent runs between two checkpoints, timed on the wall clock.

An agent that holds the event loop delays everything else in the process, even
the reader that would read an INTERRUPT (docs/testing.md, "reach a checkpoint
often"). The timer times only the tasks that run the agent, known by identity.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import trio

from trio_agent.observability.facts import RequestFacts
from trio_agent.observability.trace import (
    MemoryTracer,
    RecordingSessionTrace,
    SessionTrace,
    TraceEvent,
    Tracer,
)
from trio_agent.testing.rules import AGENT_RULES, Finding


class StepTimer(trio.abc.Instrument):
    """Measures how long each watched task runs between two checkpoints (wall clock).

    A task is watched once :meth:`watch` has been told about it, which the task
    itself does in its first step: that step is timed too, because every task's
    start is noted and only its end is checked against the watched set.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_task = ""
        # Weak: a finished task is forgotten with it (Task compares by identity).
        self._watched: weakref.WeakSet[trio.lowlevel.Task] = weakref.WeakSet()
        self._started: dict[trio.lowlevel.Task, float] = {}

    def watch(self, task: trio.lowlevel.Task) -> None:
        """Time ``task`` from now on: it runs the agent."""
        self._watched.add(task)

    def reset(self) -> None:
        self.longest = 0.0
        self.longest_task = ""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started[task] = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        started = self._started.pop(task, None)
        if started is None:
            return
        took = time.perf_counter() - started
        if took > self.longest and task in self._watched:
            self.longest = took
            self.longest_task = task.name

    def findings(self, scenario: str, limit: float) -> list[Finding]:
        if self.longest <= limit:
            return []
        return [
            Finding(
                scenario,
                f"agent rule: {AGENT_RULES['checkpoint']}",
                f"the agent ran for {self.longest * 1e3:,.0f} ms without reaching a checkpoint "
                f"(task {self.longest_task!r}; the limit is {limit * 1e3:,.0f} ms). While it runs "
                "nothing else in the process runs, not even the reader that would read an "
                "INTERRUPT. Await something in long computations "
                "(`await trio.lowlevel.checkpoint()`), or move blocking calls to "
                "`await trio.to_thread.run_sync(fn, abandon_on_cancel=True)`.",
            )
        ]


class WatchingTracer(MemoryTracer):
    """A :class:`MemoryTracer` that has ``steps`` watch each request task of the server.

    A session calls the trace's ``scope_opened`` hook from the task that runs the
    request, just before the agent starts: that is where the task is found.
    """

    def __init__(self, steps: StepTimer) -> None:
        super().__init__()
        self._steps = steps

    def session(self, session_id: str) -> SessionTrace:
        return _WatchingSessionTrace(session_id, self.events.append, self, self._steps)


class _WatchingSessionTrace(RecordingSessionTrace):
    __slots__ = ("_steps",)

    def __init__(
        self,
        session_id: str,
        sink: Callable[[TraceEvent], None],
        tracer: Tracer,
        steps: StepTimer,
    ) -> None:
        super().__init__(session_id, sink, tracer)
        self._steps = steps

    def scope_opened(self, record: RequestFacts, timeout_s: float) -> None:
        self._steps.watch(trio.lowlevel.current_task())
        super().scope_opened(record, timeout_s)
