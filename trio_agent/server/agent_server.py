"""The server: a listener and a nursery of sessions, with a graceful shutdown.

The top of the cancel-scope tree; a session's failure stays in that session.
``docs/cancellation.md`` shows the tree and the shutdown.
"""

from __future__ import annotations

import secrets
import socket
from collections import Counter
from collections.abc import Mapping

import trio
from loguru import logger
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from trio_agent._version import __version__
from trio_agent.agents import Agent, agent_entry, builtin_agents, open_agents
from trio_agent.observability.blocking import report_blocking_tasks
from trio_agent.observability.metrics import ServerMetrics
from trio_agent.observability.trace import Tracer, tracer_for
from trio_agent.protocol.messages import (
    AudioFormat,
    CloseCode,
    Limits,
    ResumeMessage,
    SessionPayload,
)
from trio_agent.server.accept import serve_listeners
from trio_agent.server.admission import AdmissionPolicy, HandshakeFacts, Refuse, admit
from trio_agent.server.cluster_link import ClusterLink
from trio_agent.server.config import ServerConfig
from trio_agent.server.connection import ClusterResume
from trio_agent.server.cork import CorkableStream
from trio_agent.server.drain import DRAIN_CLOSE_REASON, drain_sessions
from trio_agent.server.frame_budget import FrameBudgetStream
from trio_agent.server.inbound import DirectReadWebSocket
from trio_agent.server.redaction import redact_subprotocols, redact_target
from trio_agent.server.resume_book import Redeemed, ResumeBook
from trio_agent.server.session import Session
from trio_agent.server.startup import check_trace_file
from trio_agent.server.transport import (
    Listener,
    guard,
    listening_port,
    open_listeners,
    peer_address,
    server_ssl_context,
)
from trio_agent.server.web.assets import load_assets
from trio_agent.server.web.front import serve_http
from trio_agent.server.web.routes import WebApp
from trio_agent.speech.synthesizers import Synthesizer, select_synthesizer

#: The most of a client's header a log line shows.
_LOGGED_HEADER_CHARS = 200

#: Linux's TCP_NOTSENT_LOWAT (``socket`` names it only on some builds).
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


class AgentServer:
    """A trio-agent server. ``await server.run()`` serves until :meth:`shutdown`.

    :param config: settings; ``ServerConfig()`` serves ``ws://127.0.0.1:8765/ws``.
    :param agents: agents by name; the built-in ``lorem`` and ``echo`` when omitted.
    :param trace: where trace events go (:mod:`trio_agent.observability.trace`), e.g. a
        :class:`~trio_agent.observability.trace.MemoryTracer`; by default the file named by
        ``config.trace``, if any, which the server closes when :meth:`run` returns.
    :param synthesizer: what speaks replies (:mod:`trio_agent.speech.synthesizers`); by
        default the one ``config.speech`` selects.
    :param reuse_port: listen with ``SO_REUSEPORT``, sharing the port with other
        processes (the workers of ``serve --workers N``).

    Use ``server = await nursery.start(AgentServer(config).run)`` to get the server
    back once it listens (its :attr:`port` is then the real one, even for port 0).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        agents: Mapping[str, Agent] | None = None,
        *,
        trace: Tracer | None = None,
        synthesizer: Synthesizer | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config or ServerConfig()
        self._reuse_port = reuse_port
        self.synthesizer = (
            synthesizer if synthesizer is not None else select_synthesizer(self.config.speech)
        )
        speaks = self.synthesizer
        if trace is None and self.config.trace:
            check_trace_file(self.config.trace)  # now, not at a session's first event
        self.tracer = trace if trace is not None else tracer_for(self.config.trace)
        self._owns_tracer = trace is None
        self.agents: dict[str, Agent] = dict(builtin_agents() if agents is None else agents)
        self.port: int | None = None
        self.sessions: dict[str, Session] = {}
        self.sessions_total = 0
        self._shutdown_requested = trio.Event()
        self._shutdown_reason = "server shutting down"
        #: Whether the shutdown asked for is a drain (:meth:`drain`), and so the close code.
        self._draining = False
        self._close_code = CloseCode.GOING_AWAY
        #: Set when idle HTTP connections should close: at once on a shutdown, after
        #: the drain (a draining node still answers /readyz, with 503).
        self._http_closing = trio.Event()
        self._connections = 0
        self._no_connections = trio.Event()
        self._no_connections.set()
        #: Set while the server holds no session (connected or waiting for a RESUME).
        self._no_sessions = trio.Event()
        self._no_sessions.set()
        #: The sessions that may be resumed, their tokens and windows (v1.2).
        self.resume_book = ResumeBook()
        #: The node of a cluster this server is (set before :meth:`run`), or ``None``.
        self.cluster: ClusterLink | None = None
        self._nursery: trio.Nursery | None = None
        self._admission = AdmissionPolicy.from_config(self.config)
        #: Values hidden wherever a log line shows what a client sent.
        self._secrets = tuple(s for s in (self.config.token, self.config.metrics_token) if s)
        # Loaded now, so that a bad certificate stops the server before it starts.
        self._ssl_context = (
            server_ssl_context(self.config.certfile, self.config.keyfile)
            if self.config.tls
            else None
        )
        #: Sessions admitted at the handshake and not yet over: what max_sessions bounds.
        self._admitted = 0
        #: The same sessions by client address: what max_sessions_per_address bounds.
        self._admitted_from: Counter[str] = Counter()
        self._session_payload = SessionPayload(
            server=f"trio-agent/{__version__}",
            agents={name: agent_entry(agent) for name, agent in self.agents.items()},
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
            voices=list(speaks.voices) if speaks is not None else [],
            default_voice=speaks.default_voice if speaks is not None else None,
            audio_formats=[AudioFormat(sample_rate=speaks.sample_rate)] if speaks else [],
            synthesizer=speaks.name if speaks is not None else None,
        )
        self.metrics = ServerMetrics(self.stats)
        self.web = WebApp(
            websocket_path=self.config.path,
            page=self.config.web,
            assets=load_assets(demo=self.config.web),
            ready=lambda: not self.shutting_down,
            degraded=lambda: self.cluster.problem if self.cluster is not None else None,
            metrics=self.metrics,
            host_refusal=self._admission.host_refusal,
            metrics_token=self.config.metrics_token or None,
            metrics_cache_s=self.config.metrics_cache_s,
            clock=trio.current_time,
            node=self.config.node_id or None,
        )

    @property
    def url(self) -> str:
        """The ``ws://`` (or ``wss://``) URL clients connect to (the real port once listening)."""
        port = self.port if self.port is not None else self.config.port
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{self.config.host}:{port}{self.config.path}"

    @property
    def http_url(self) -> str:
        """The ``http://`` (or ``https://``) URL of the same listener: the demo page,
        /healthz, /metrics."""
        port = self.port if self.port is not None else self.config.port
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{self.config.host}:{port}/"

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_requested.is_set()

    @property
    def draining(self) -> bool:
        """Whether this node drains (:meth:`drain`): a resume of a session it does not
        hold must then be refused, so that the client resumes on another node."""
        return self._draining

    async def run(
        self, *, task_status: trio.TaskStatus[AgentServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until :meth:`shutdown` is called, then drain and return.

        Draining: stop accepting, end every running request with
        ``DONE{status: shutdown}``, let each session flush and close with 1001, all
        within ``shutdown_grace_s``; whatever is left after that is cancelled.

        The agents' resources are opened first and closed last (see the module
        docstring); an agent that fails to open stops the server before it listens.
        """
        async with open_agents(self.agents.values()):
            await self._serve(task_status)

    async def _serve(self, task_status: trio.TaskStatus[AgentServer]) -> None:
        if self.config.lanes == "fifo":
            logger.warning("lanes=fifo: diagnostic mode, INTERRUPT_ACK queues behind stream frames")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listener_scope = trio.CancelScope()
            listeners = await nursery.start(self._listen, listener_scope)
            self.port = listening_port(listeners[0])
            logger.info("listening", url=self.url, http=self.http_url, agents=sorted(self.agents))
            if self.config.slow_step_warn_s > 0:
                nursery.start_soon(report_blocking_tasks, self.config.slow_step_warn_s)
            if self.config.stats_interval_s > 0:
                nursery.start_soon(self._log_stats, name="server stats")
            task_status.started(self)
            await self._shutdown_requested.wait()

            logger.info(
                "draining" if self._draining else "shutting down",
                reason=self._shutdown_reason,
                sessions=len(self.sessions),
            )
            if self._draining:
                give_up_at = await drain_sessions(list(self.sessions.values()), self.config.drain_s)
                listener_scope.cancel(reason="drained")
                self._http_closing.set()
            else:
                listener_scope.cancel(reason="shutdown")
                for session in list(self.sessions.values()):
                    session.begin_shutdown(self._shutdown_reason)
                give_up_at = trio.current_time() + self.config.shutdown_grace_s + 1.0
            with trio.move_on_at(give_up_at) as grace:
                await self._no_connections.wait()
                await self._no_sessions.wait()
            if grace.cancelled_caught:
                logger.warning(
                    "sessions still open after the grace period; cancelling them",
                    left=len(self.sessions),
                )
            nursery.cancel_scope.cancel(reason="server stopped")
        if self._owns_tracer:
            self.tracer.close()
        logger.info("server stopped")

    def shutdown(self, reason: str = "server shutting down") -> None:
        """Ask :meth:`run` to drain and return. Idempotent; never blocks."""
        if not self._shutdown_requested.is_set():
            self._shutdown_reason = reason
            self._shutdown_requested.set()
            if not self._draining:
                self._http_closing.set()

    def drain(self, reason: str = "node draining") -> None:
        """Ask :meth:`run` to drain this node of a cluster, then return (what SIGTERM
        does in cluster mode; ``docs/cluster.md``, "Drain"). Never blocks.

        At once ``/readyz`` answers 503 and handshakes are refused with 503. Each
        session is closed with 1012 as soon as it has no request running
        (:meth:`Session.drain <trio_agent.server.drain.SessionDrain.drain>`); after
        ``drain_s`` the requests still running end with ``DONE{status: shutdown}``
        and their connections close with 1012 too. The listener answers until then
        (sessions opened meanwhile end at once), and :meth:`run` returns within
        ``drain_s`` + 2 s. Ignored once a shutdown or a drain has begun.
        """
        if not self._shutdown_requested.is_set():
            self._draining = True
            self._close_code = CloseCode.SERVICE_RESTART
            self.shutdown(reason)

    async def _listen(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[list[Listener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept TCP (or TLS) connections; each one is served by :meth:`serve_stream`
        in the server nursery (not under this scope: stopping the listener keeps them)."""
        assert self._nursery is not None
        with scope:
            listeners = await open_listeners(
                self.config, self._ssl_context, reuse_port=self._reuse_port
            )
            # Not trio.serve_listeners: at the fd limit it logs a traceback every
            # 100 ms; this one backs off and logs once a second (accept.py).
            await serve_listeners(
                self.serve_stream, listeners, handler_nursery=self._nursery, task_status=task_status
            )

    async def _handle_handshake(
        self,
        request: WebSocketRequest,
        cork: CorkableStream | None = None,
        peer: str | None = None,
    ) -> None:
        """Admit or refuse a handshake (the policy is :func:`trio_agent.server.admission.admit`),
        then serve the session. A refused client gets an HTTP status and no session.
        ``peer`` is the TCP peer's IP address, if the stream has one."""
        facts = HandshakeFacts(
            target=request.path,
            host=_host_of(request),
            headers=request.headers,
            subprotocols=request.proposed_subprotocols,
        )
        client = self._admission.client_address(peer, facts)
        decision = admit(
            facts,
            self._admission,
            draining=self.shutting_down,
            sessions=self._admitted,
            sessions_from_address=self._admitted_from[client] if client else 0,
        )
        if isinstance(decision, Refuse):
            self.metrics.handshake_refused(decision.status)
            logger.info(
                "handshake refused",
                status=decision.status,
                why=decision.reason,
                target=redact_target(facts.target, self._secrets),
                host=facts.host[:_LOGGED_HEADER_CHARS],
                origin=", ".join(facts.header("origin"))[:_LOGGED_HEADER_CHARS],
                remote=str(request.remote),
                client=client,
            )
            await request.reject(
                decision.status, extra_headers=list(decision.headers), body=decision.body
            )
            return
        logger.debug(
            "handshake accepted",
            target=redact_target(facts.target, self._secrets),
            subprotocols=redact_subprotocols(facts.subprotocols),
            remote=str(request.remote),
        )
        self._admitted += 1
        if client:
            self._admitted_from[client] += 1
        try:
            ws = await request.accept(subprotocol=decision.subprotocol)
            await self.serve_connection(ws, cork)
        finally:
            self._admitted -= 1
            if client:
                self._admitted_from[client] -= 1
                if not self._admitted_from[client]:
                    del self._admitted_from[client]

    async def serve_connection(
        self, ws: WebSocketConnection, cork: CorkableStream | None = None
    ) -> None:
        """Serve a session on an accepted WebSocket; never raises for a session's failure.

        A new session is opened (its task in the server's nursery: it may outlive
        this connection) and served on ``ws``; when the first frame is an accepted
        RESUME, the connection goes on to serve the resumed session instead.
        ``cork`` is the stream under ``ws`` when it is a :class:`CorkableStream`.
        """
        if self._nursery is None:
            # Served without run() (a test over memory streams): the sessions'
            # nursery is this connection's, so the session ends before this returns.
            async with trio.open_nursery() as sessions:
                await self._serve_connection(ws, cork, sessions)
        else:
            await self._serve_connection(ws, cork, self._nursery)

    async def _serve_connection(
        self, ws: WebSocketConnection, cork: CorkableStream | None, sessions: trio.Nursery
    ) -> None:
        session = await self._open_session(sessions)
        try:
            handover = await session.serve(ws, cork)
            while handover is not None:
                if isinstance(handover, ClusterResume):
                    assert self.cluster is not None
                    decided = await self.cluster.resume(ws, handover.message)
                    if decided is None:
                        return
                    handover = decided
                handover = await handover.target.serve(ws, cork, resuming=handover)
        except Exception as exc:
            logger.opt(exception=exc).error("session failed", session_id=session.session_id)

    async def _open_session(
        self,
        sessions: trio.Nursery,
        *,
        session_id: str | None = None,
        msg_id_prefix: str = "",
        resume_token: str | None = None,
    ) -> Session:
        """Start a new session's task in the server's nursery (the nursery of sessions)."""
        session = Session(
            session_id=session_id or secrets.token_hex(8),
            cluster=self.cluster,
            msg_id_prefix=msg_id_prefix,
            resume_token=resume_token,
            config=self.config,
            agents=self.agents,
            session_payload=self._session_payload,
            metrics=self.metrics,
            trace=self.tracer,
            synthesizer=self.synthesizer,
            book=self.resume_book,
            take_over=self._take_over,
        )
        self.sessions[session.session_id] = session
        self.sessions_total += 1
        self._no_sessions = trio.Event()
        await sessions.start(self._run_session, session, name=f"session {session.session_id}")
        if self.shutting_down:
            reason = DRAIN_CLOSE_REASON if self._draining else self._shutdown_reason
            session.begin_shutdown(reason, self._close_code)
        return session

    async def adopt_session(self, session_id: str, *, epoch: int, token: str) -> Session:
        """Cluster: open a session taken over from another node, under its old id.

        Its frames are numbered under the new ``epoch`` (``msg_id`` ``<epoch>-s<n>``),
        its resume token is the one the store issued; the caller fills its replay
        buffer and relays what still runs elsewhere (:mod:`trio_agent.cluster`).
        """
        assert self._nursery is not None
        if (old := self.sessions.pop(session_id, None)) is not None:
            # An earlier life of it here, handed on since: under another key.
            self.sessions[f"{session_id}#{secrets.token_hex(4)}"] = old
        return await self._open_session(
            self._nursery, session_id=session_id, msg_id_prefix=f"{epoch}-", resume_token=token
        )

    async def _run_session(
        self, session: Session, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await session.run(task_status=task_status)
        except Exception as exc:
            logger.opt(exception=exc).error("session failed", session_id=session.session_id)
        finally:
            # (Under another key when a later life of it came here: adopt_session.)
            keys = [session.session_id] if self.sessions.get(session.session_id) is session else []
            for key in keys or [k for k, held in self.sessions.items() if held is session]:
                del self.sessions[key]
            if not self.sessions:
                self._no_sessions.set()

    def _take_over(
        self, resumer: Session, message: ResumeMessage
    ) -> tuple[Redeemed, Session | None, str | None]:
        """Check a RESUME read on ``resumer`` (synchronous: the token is spent before
        any other RESUME can be read, so of two racing ones exactly one wins)."""
        target = self.sessions.get(message.session_id)
        if target is None or target is resumer or target.ended or not target.resumable:
            return Redeemed.UNKNOWN, None, None
        verdict, token = self.resume_book.redeem(
            message.session_id, message.payload.token, now=trio.current_time()
        )
        return verdict, (target if verdict is Redeemed.OK else None), token

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over any Trio stream: TCP from the listener, or memory
        streams in tests. Plain HTTP requests are answered (:mod:`trio_agent.server.web`);
        a WebSocket upgrade to the agent's path runs the handshake, then the session.
        Closes the stream. When it returns, nothing of the connection is left running."""
        self._connection_opened()
        peer = peer_address(stream)
        self._bound_unsent_data(stream)
        # The guard bounds how long a write may wait for a client that does not
        # read, and aborts the connection when a frame could not be finished.
        guarded = guard(stream, send_timeout_s=self.config.send_timeout_s)
        try:
            upgraded = await serve_http(
                guarded,
                self.web,
                head_timeout_s=self.config.handshake_timeout_s,
                draining=self._http_closing,
            )
            if upgraded is None:
                return
            # The session's writer batches frames through the cork; under it, every
            # WebSocket frame the client sends is counted against its budget.
            cork = CorkableStream(
                FrameBudgetStream(
                    upgraded,
                    rate_per_s=self.config.ws_frame_rate_per_s,
                    burst=self.config.ws_frame_burst,
                    max_message_bytes=self.config.max_message_bytes,
                )
            )
            # No reader task: the session's reader reads this socket itself
            # (server/inbound.py), and so does the handshake, right here.
            ws = DirectReadWebSocket(cork, max_message_size=self.config.max_message_bytes)
            request = None
            # Bounded, and a client that leaves mid-handshake ends the wait at once.
            with (
                trio.move_on_after(self.config.handshake_timeout_s),
                guarded.cancel_if_peer_leaves(),
            ):
                request = await ws.receive_request()
            if request is not None:
                await self._handle_handshake(request, cork, peer)
        except* ConnectionClosed:
            # The peer left while its handshake was being answered: an ordinary
            # disconnect.
            logger.debug("connection closed during the handshake")
        except* Exception as group:
            logger.opt(exception=group).warning("connection failed")
        finally:
            self._connection_closed()
            await trio.aclose_forcefully(guarded)

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
        """Wait until no connection is open and no session is held, down to their last
        task (returns at once if none is). Handy in tests: ``await server.wait_idle()``
        after a client left. A session whose connection dropped is held until it is
        resumed or its ``resume_window_s`` passes."""
        await self._no_connections.wait()
        await self._no_sessions.wait()

    async def _log_stats(self) -> None:
        """Log :meth:`stats` at DEBUG every ``stats_interval_s`` (the soak reads it)."""
        while True:
            logger.debug("server stats", **self.stats())
            await trio.sleep(self.config.stats_interval_s)

    def stats(self) -> dict[str, int]:
        """Counts for monitoring and tests: sessions, requests, live tasks.

        ``tasks`` counts every task under the server's nursery (listeners and
        connections with all their descendants): back at its idle value, nothing
        of any connection is left.
        """
        return {
            "sessions": len(self.sessions),
            "sessions_total": self.sessions_total,
            "connections": self._connections,
            "requests_running": sum(s.registry.running_count for s in self.sessions.values()),
            "tasks": _count_tasks(self._nursery) if self._nursery is not None else 0,
        }


def _host_of(request: WebSocketRequest) -> str:
    # wsproto keeps the Host header out of the header list and trio-websocket does
    # not expose it, so read it from the handshake event the request wraps.
    event = getattr(request, "_event", None)
    host = getattr(event, "host", None)
    return host if isinstance(host, str) else ""


def _count_tasks(nursery: trio.Nursery) -> int:
    count = 0
    for task in nursery.child_tasks:
        count += 1
        for child in task.child_nurseries:
            count += _count_tasks(child)
    return count
