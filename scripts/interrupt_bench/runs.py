"""A benchmark run from start to end: its record's header, its servers, its wall time.

The interrupt and voice benchmarks run the same way: the servers they need are
started together (start-up is mostly imports) and stopped together whatever
happens, SIGTERM stops a run the way Ctrl-C does (so the servers are stopped
too), and the record of a run says which command ran, on what machine, at what
load, for how long.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .servers import RunningServer, raise_open_file_limit

Run = dict[str, Any]


def new_run(script: str, budget: dict[str, Any]) -> Run:
    """The header of a run's record: the command, when, the machine, and the counts."""
    return {
        "command": shlex.join([f"scripts/{script}", *sys.argv[1:]]),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "budget": budget,
    }


@asynccontextmanager
async def serving(servers: Collection[RunningServer], run: Run) -> AsyncIterator[None]:
    """Wait until every server accepts connections; on exit, however it comes (an
    error, Ctrl-C, a cancellation), stop them all and note the run's wall time and
    the load average at its end."""
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(s.wait_ready() for s in servers))
        yield
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()
    run["wall_s"] = round(time.perf_counter() - t0, 1)
    run["machine"]["load_average_at_end"] = os.getloadavg()


def run_benchmark(
    prefix: str, log_dir: Path | None, body: Callable[[Path], Coroutine[Any, Any, Run]]
) -> Run:
    """Run ``body(log_dir)`` in asyncio and return its record.

    The servers' logs go to ``log_dir``, or to a temporary folder (named with
    ``prefix``) that is removed at the end. SIGTERM raises ``KeyboardInterrupt``
    from here on, and the open-file limit is raised for the many connections.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise_open_file_limit()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = log_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        run = asyncio.run(body(folder))
    print(f"\nwall time: {run['wall_s']} s")
    return run
