"""The server: a listener and a nursery of sessions, with a graceful shutdown.

The top of the cancel-scope tree::

    AgentServer.run
    └── server nursery
        ├── listener task (its own CancelScope: shutdown stops accepting first)
        ├── Session.run  (one per connection; see trio_agent.session)
        └── ...

A session's failure stays in that session: :meth:`AgentServer.serve_connection`
logs anything a session raises and returns, because trio-websocket would otherwise
let the handler's exception escape into the server nursery and take every other
session down with it.
"""

from __future__ import annotations

import secrets
import signal
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

import trio
from loguru import logger
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from . import __version__
from .agents import Agent, builtin_agents, describe
from .config import ServerConfig
from .cork import CorkableStream
from .protocol import AgentEntry, Limits, SessionPayload
from .session import Session

#: Linux's TCP_NOTSENT_LOWAT (``socket`` names it only on some builds).
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


class AgentServer:
    """A trio-agent server. ``await server.run()`` serves until :meth:`shutdown`.

    :param config: settings; ``ServerConfig()`` serves ``ws://127.0.0.1:8765/ws``.
    :param agents: agents by name; the built-in ``lorem`` and ``echo`` when omitted.

    Use ``server = await nursery.start(AgentServer(config).run)`` to get the server
    back once it listens (its :attr:`port` is then the real one, even for port 0).
    """

    def __init__(
        self, config: ServerConfig | None = None, agents: Mapping[str, Agent] | None = None
    ) -> None:
        self.config = config or ServerConfig()
        self.agents: dict[str, Agent] = dict(builtin_agents() if agents is None else agents)
        self.port: int | None = None
        self.sessions: dict[str, Session] = {}
        self.sessions_total = 0
        self._shutdown_requested = trio.Event()
        self._shutdown_reason = "server shutting down"
        self._connections = 0
        self._no_connections = trio.Event()
        self._no_connections.set()
        self._nursery: trio.Nursery | None = None
        self._session_payload = SessionPayload(
            server=f"trio-agent/{__version__}",
            agents={
                name: AgentEntry(description=describe(agent)) for name, agent in self.agents.items()
            },
            default_agent=self.config.default_agent
            if self.config.default_agent in self.agents
            else None,
            limits=Limits(
                max_message_bytes=self.config.max_message_bytes,
                max_input_bytes=self.config.max_input_bytes,
                max_concurrent_requests=self.config.max_concurrent_requests,
                stream_lane_capacity=self.config.stream_lane_capacity,
                request_timeout_cap_s=self.config.request_timeout_cap_s,
                idle_timeout_s=self.config.idle_timeout_s or None,
            ),
        )

    @property
    def url(self) -> str:
        """The ``ws://`` URL clients connect to (the real port once listening)."""
        port = self.port if self.port is not None else self.config.port
        return f"ws://{self.config.host}:{port}{self.config.path}"

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_requested.is_set()

    async def run(
        self, *, task_status: trio.TaskStatus[AgentServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until :meth:`shutdown` is called, then drain and return.

        Draining: stop accepting, end every running request with
        ``DONE{status: shutdown}``, let each session flush and close with 1001, all
        within ``shutdown_grace_s``; whatever is left after that is cancelled.
        """
        if self.config.lanes == "fifo":
            logger.warning("lanes=fifo: diagnostic mode, INTERRUPT_ACK queues behind stream frames")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listener_scope = trio.CancelScope()
            listeners = await nursery.start(self._listen, listener_scope)
            self.port = listeners[0].socket.getsockname()[1]
            logger.info("listening", url=self.url, agents=sorted(self.agents))
            task_status.started(self)
            await self._shutdown_requested.wait()

            logger.info("shutting down", reason=self._shutdown_reason, sessions=len(self.sessions))
            listener_scope.cancel(reason="shutdown")
            for session in list(self.sessions.values()):
                session.begin_shutdown(self._shutdown_reason)
            with trio.move_on_after(self.config.shutdown_grace_s + 1.0) as grace:
                await self._no_connections.wait()
            if grace.cancelled_caught:
                logger.warning(
                    "sessions still open after the grace period; cancelling them",
                    left=len(self.sessions),
                )
            nursery.cancel_scope.cancel(reason="server stopped")
        logger.info("server stopped")

    def shutdown(self, reason: str = "server shutting down") -> None:
        """Ask :meth:`run` to drain and return. Idempotent; never blocks."""
        if not self._shutdown_requested.is_set():
            self._shutdown_reason = reason
            self._shutdown_requested.set()

    async def _listen(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept TCP connections; each one is served by :meth:`serve_stream` in the
        server nursery (not under this scope: stopping the listener keeps them)."""
        assert self._nursery is not None
        with scope:
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
            await trio.serve_listeners(
                self.serve_stream, listeners, handler_nursery=self._nursery, task_status=task_status
            )

    async def _handle_handshake(
        self, request: WebSocketRequest, cork: CorkableStream | None = None
    ) -> None:
        if urlsplit(request.path).path != self.config.path:
            await request.reject(404, body=b"no WebSocket endpoint here\n")
            return
        if self.shutting_down:
            await request.reject(503, body=b"server is shutting down\n")
            return
        ws = await request.accept()
        await self.serve_connection(ws, cork)

    async def serve_connection(
        self, ws: WebSocketConnection, cork: CorkableStream | None = None
    ) -> None:
        """Run one session on an accepted WebSocket; never raises for a session's failure.

        ``cork`` is the stream under ``ws`` when it is a :class:`CorkableStream`.
        """
        session = Session(
            ws,
            session_id=secrets.token_hex(8),
            config=self.config,
            agents=self.agents,
            session_payload=self._session_payload,
            cork=cork,
        )
        self.sessions[session.session_id] = session
        self.sessions_total += 1
        if self.shutting_down:
            session.begin_shutdown(self._shutdown_reason)
        try:
            await session.run()
        except Exception as exc:
            logger.opt(exception=exc).error("session failed", session_id=session.session_id)
        finally:
            del self.sessions[session.session_id]

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over any Trio stream: TCP from the listener, or memory
        streams in tests. Runs the WebSocket handshake, then the session, and closes
        the stream. When it returns, nothing of the connection is left running."""
        self._connection_opened()
        try:
            self._bound_unsent_data(stream)
            async with trio.open_nursery() as nursery:
                # The session's writer batches frames through the cork.
                cork = CorkableStream(stream)
                with trio.move_on_after(self.config.handshake_timeout_s):
                    request = await wrap_server_stream(
                        nursery, cork, max_message_size=self.config.max_message_bytes
                    )
                if request is not None:
                    await self._handle_handshake(request, cork)
                # trio-websocket's reader task for this connection lives in this
                # nursery; the session is over, so stop it.
                nursery.cancel_scope.cancel(reason="connection over")
        except Exception as exc:
            logger.opt(exception=exc).warning("connection failed")
        finally:
            self._connection_closed()
            await trio.aclose_forcefully(stream)

    def _bound_unsent_data(self, stream: trio.abc.Stream) -> None:
        """Apply ``tcp_notsent_lowat`` to a TCP stream (a no-op for other streams).

        With it, the socket stops taking data once that much is unsent, so a slow
        client's backlog waits in the stream lane, where an INTERRUPT drops it,
        rather than in the kernel, where the INTERRUPT_ACK would queue behind it.
        """
        lowat = self.config.tcp_notsent_lowat
        if lowat and isinstance(stream, trio.SocketStream):
            try:
                stream.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, lowat)
            except OSError as exc:
                logger.warning("tcp_notsent_lowat is not supported here", error=str(exc))

    def _connection_opened(self) -> None:
        if not self._connections:
            self._no_connections = trio.Event()
        self._connections += 1

    def _connection_closed(self) -> None:
        self._connections -= 1
        if not self._connections:
            self._no_connections.set()

    async def wait_idle(self) -> None:
        """Wait until no connection is open, down to its last task (returns at once
        if none is). Handy in tests: ``await server.wait_idle()`` after a client left."""
        await self._no_connections.wait()

    def stats(self) -> dict[str, int]:
        """Counts for monitoring and tests: sessions, requests, live tasks."""
        return {
            "sessions": len(self.sessions),
            "sessions_total": self.sessions_total,
            "connections": self._connections,
            "requests_running": sum(s.registry.running_count for s in self.sessions.values()),
            "tasks": _count_tasks(self._nursery) if self._nursery is not None else 0,
        }


def _count_tasks(nursery: trio.Nursery) -> int:
    count = 0
    for task in nursery.child_tasks:
        count += 1
        for child in task.child_nurseries:
            count += _count_tasks(child)
    return count


async def serve(
    config: ServerConfig | None = None, agents: Mapping[str, Agent] | None = None
) -> None:
    """Run a server until SIGINT or SIGTERM, then shut down gracefully and return.

    A second signal during the drain cancels what is left at once.
    """
    server = AgentServer(config, agents)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not server.shutting_down:
                        server.shutdown(f"{name} received")
                    else:
                        logger.warning("second signal: stopping now", signal=name)
                        nursery.cancel_scope.cancel(reason=f"second {name}")

            nursery.start_soon(watch_signals)
            await server.run()
            nursery.cancel_scope.cancel(reason="server stopped")
