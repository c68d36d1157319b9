"""Running a server from a script: until SIGINT or SIGTERM, then a graceful stop.

:func:`serve` is what ``trio-agent serve`` runs; a signal shuts the server down
(or, in cluster mode, drains it: ``docs/cluster.md``), a second one cancels what
is left at once.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Mapping

import trio
from loguru import logger

from trio_agent.agents import Agent
from trio_agent.server.agent_server import AgentServer
from trio_agent.server.config import ServerConfig

__all__ = ["freeze_startup_heap", "serve", "serve_server"]


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now out of the collector's sight.

    Why: what start-up leaves (modules, classes, pydantic's schemas: about 60,000
    objects) lives as long as the process, yet each full collection of the oldest
    generation walks all of it, in the middle of some session's step: tens of
    milliseconds in which no session of the server moves (docs/performance.md,
    "Tuning the hot path"). ``gc.freeze()`` leaves those objects out of every later
    collection; what sessions create is collected as before. Once, when the server
    is up: a frozen object is never collected, so garbage frozen stays.
    """
    gc.collect()
    gc.freeze()


async def serve(
    config: ServerConfig | None = None,
    agents: Mapping[str, Agent] | None = None,
    *,
    reuse_port: bool = False,
) -> None:
    """Run a server until SIGINT or SIGTERM, then shut down gracefully and return.

    In cluster mode (``config.clustered``) SIGTERM drains the node instead
    (:meth:`AgentServer.drain`): what a deploy or a scale-down sends. A second
    signal during the shutdown or the drain cancels what is left at once.
    """
    await serve_server(AgentServer(config, agents, reuse_port=reuse_port))


async def serve_server(server: AgentServer, *, freeze_heap: bool = True) -> None:
    """Run ``server`` until SIGINT or SIGTERM, then shut it down gracefully (or, in
    cluster mode, drain it) and return; a second signal cancels what is left at once.
    :func:`serve` with a server built beforehand, e.g. one that a cluster node wraps.

    ``freeze_heap``: once the server listens, :func:`freeze_startup_heap` (the
    process is the server's own; an application that embeds a server in a process
    of its own making passes False).
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not server.shutting_down:
                        if signum == signal.SIGTERM and server.config.clustered:
                            server.drain(f"{name} received")
                        else:
                            server.shutdown(f"{name} received")
                    else:
                        logger.warning("second signal: stopping now", signal=name)
                        nursery.cancel_scope.cancel(reason=f"second {name}")

            nursery.start_soon(watch_signals)

            async def run(
                task_status: trio.TaskStatus[AgentServer] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await server.run(task_status=task_status)
                nursery.cancel_scope.cancel(reason="server stopped")

            await nursery.start(run)
            if freeze_heap:
                freeze_startup_heap()
