"""``trio-agent serve`` with counters, for ``scripts/count_steps.py``.

Run as a script (``python -P counting_serve.py KEY serve ...``) with the source
tree under test on ``PYTHONPATH``: it imports that tree's ``trio_agent``, adds a Trio
instrument when the first session opens (task steps, scheduler passes), counts
the STREAM frames and batches the session reports written, and at exit writes
the counts with the process's system calls (``/proc/self/io``) to
``$TRIO_AGENT_COUNTS/<KEY>.<pid>.json``. Nothing here changes what the server
does; the instrument costs each task step a call.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from trio_agent.cli.main import main
from trio_agent.observability import events
from trio_agent.protocol.constants import FrameKind

COUNTS = {"steps": 0, "passes": 0, "stream_frames": 0, "batches": 0}


class _Count(trio.abc.Instrument):
    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        COUNTS["steps"] += 1

    def before_io_wait(self, timeout: float) -> None:
        COUNTS["passes"] += 1


_INSTRUMENT = _Count()
_opened = events.SessionEvents.session_opened
_written = events.SessionEvents.batch_written


def _session_opened(self: Any, remote: str) -> None:
    trio.lowlevel.add_instrument(_INSTRUMENT)  # (a second add is a no-op)
    _opened(self, remote)


def _batch_written(self: Any, batch: Any) -> None:
    COUNTS["batches"] += 1
    COUNTS["stream_frames"] += sum(1 for frame, _ in batch if frame.kind is FrameKind.STREAM)
    _written(self, batch)


def _dump(label: str) -> None:
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    counts = {**COUNTS, "syscw": int(io["syscw"]), "syscr": int(io["syscr"])}
    folder = Path(os.environ["TRIO_AGENT_COUNTS"])
    (folder / f"{label}.{os.getpid()}.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    events.SessionEvents.session_opened = _session_opened  # type: ignore[method-assign]
    events.SessionEvents.batch_written = _batch_written  # type: ignore[method-assign]
    atexit.register(_dump, sys.argv[1])
    sys.exit(main(sys.argv[2:]))
