"""The front of every connection: HTTP/1.1 until the client asks for the WebSocket.

:func:`serve_http` answers plain requests and hands a WebSocket upgrade to
trio-websocket with the bytes already read. docs/web.md covers timeouts and shutdown.
"""

from __future__ import annotations

import time
from collections import deque
from http import HTTPStatus

import h11
import trio
from loguru import logger

from trio_agent.server.web.routes import HttpRequest, HttpResponse, WebApp
from trio_agent.server.web.routing import Route, framing_error, target_path, websocket_key_problem

#: Bytes asked of the transport per read.
RECEIVE_SIZE = 16 * 1024
#: The largest request head h11 buffers before it answers 431.
MAX_HEAD_BYTES = 16 * 1024
#: After a response that closes the connection, how long to read and discard what
#: the client still sends, so closing does not reset the connection (a TCP RST can
#: destroy the response before the client reads it).
CLOSE_LINGER_S = 1.0
#: Requests in a row a client may send before the answer to the previous one
#: (pipelining); the next gets 429 and the connection closes.
MAX_PIPELINED_REQUESTS = 16
#: Requests one connection may send in any one second; the next gets 429 and the
#: connection closes. A browser loading the demo page sends five or so, a
#: Prometheus scrape one.
MAX_REQUESTS_PER_S = 20
#: The most of a client's header a log line shows.
LOGGED_CHARS = 200


class ReplayStream(trio.abc.Stream):
    """A stream that first returns ``replay``, then reads from ``transport``.

    Writes, waits and closing go straight to ``transport``. ``receive_some`` is a
    checkpoint, replayed bytes or not, as the :class:`trio.abc.ReceiveStream`
    contract asks.
    """

    def __init__(self, transport: trio.abc.Stream, replay: bytes) -> None:
        self.transport = transport
        self._replay = replay

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._replay:
            return await self.transport.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        size = len(self._replay) if max_bytes is None else max_bytes
        chunk, self._replay = self._replay[:size], self._replay[size:]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    def send_now(self, data: memoryview) -> int:
        """``transport.send_now(data)`` where the transport has it, else ``0`` (see
        :meth:`trio_agent.server.transport.GuardedStream.send_now`)."""
        send_now = getattr(self.transport, "send_now", None)
        return 0 if send_now is None else int(send_now(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._replay = b""
        await self.transport.aclose()

    def __repr__(self) -> str:
        # trio-websocket shows a stream it cannot inspect by its repr, as the
        # connection's remote end (``session opened remote=...``): name the peer,
        # as the streams under this one do, rather than this wrapper.
        transport = self.transport
        if isinstance(transport, trio.SocketStream):
            host, port, *_ = transport.socket.getpeername()
            return f"{host}:{port}"
        return repr(transport)


async def serve_http(
    stream: trio.abc.Stream, app: WebApp, *, head_timeout_s: float, draining: trio.Event
) -> ReplayStream | None:
    """Answer HTTP requests on ``stream`` until it should close or become a WebSocket.

    Returns a :class:`ReplayStream` to hand to trio-websocket when a request is a
    WebSocket upgrade to the agent's path; ``None`` when the connection is over
    (the client left, broke the protocol, timed out, or the server drains). It
    never closes ``stream``: its caller owns it. Cancellation stops it anywhere; a
    response cut in the middle leaves the connection unusable, and the caller
    closes it.
    """
    return await _HttpConnection(
        stream, app, head_timeout_s=head_timeout_s, draining=draining
    ).serve()


class _HttpConnection:
    def __init__(
        self, stream: trio.abc.Stream, app: WebApp, *, head_timeout_s: float, draining: trio.Event
    ) -> None:
        self.stream = stream
        self.app = app
        self.head_timeout_s = head_timeout_s
        self.draining = draining
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        #: Every byte read since the current request began: what a WebSocket
        #: handshake must replay.
        self.received = bytearray()
        #: When the recent requests arrived (trio time), at most MAX_REQUESTS_PER_S of them.
        self.arrivals: deque[float] = deque()
        #: Requests in a row that were already sent when the previous answer was.
        self.pipelined = 0

    async def serve(self) -> ReplayStream | None:
        while True:
            event: h11.Request | None = None
            with trio.move_on_after(self.head_timeout_s):
                event = await self._next_request()
            if event is None:
                return None  # the client left, broke HTTP, or sent no head in time
            request = HttpRequest(event.method, event.target, list(event.headers))
            too_many = self._too_many_requests()
            if too_many is not None:
                logger.info("HTTP connection closed", status=429, why=too_many)
                answer = self.app.refusal(429, too_many, now=time.time())
                await self._send(answer, head_only=request.method == b"HEAD", close=True)
                return None
            routed = self.app.route(request)
            if routed.route is Route.WEBSOCKET:
                problem = websocket_key_problem(request.headers)
                if problem is None:
                    return ReplayStream(self.stream, bytes(self.received))
                logger.info("handshake refused", status=400, why=problem)
                response = self.app.refusal(400, f"Bad Request: {problem}", now=time.time())
            elif (refusal := self.app.host_refusal(request)) is not None:
                logger.info(
                    "HTTP request refused",
                    status=403,
                    why=refusal,
                    host=(request.header(b"host") or b"").decode("latin-1")[:LOGGED_CHARS],
                    path=target_path(request.target)[:LOGGED_CHARS],
                )
                response = self.app.refusal(403, refusal, now=time.time())
            else:
                response = self.app.respond(request, routed, now=time.time())
            if not await self._send(response, head_only=request.method == b"HEAD"):
                return None

    def _too_many_requests(self) -> str | None:
        """Why the request just read is one too many for this connection, or ``None``.

        Each answer costs the server more than the request costs the client, and a
        pipelining client can ask without waiting: these bounds keep one connection
        from holding the server busy (docs/security.md)."""
        now = trio.current_time()
        self.arrivals.append(now)
        while now - self.arrivals[0] >= 1.0:
            self.arrivals.popleft()
        if len(self.arrivals) > MAX_REQUESTS_PER_S:
            return f"more than {MAX_REQUESTS_PER_S} requests in one second on one connection"
        if self.pipelined > MAX_PIPELINED_REQUESTS:
            return f"more than {MAX_PIPELINED_REQUESTS} pipelined requests in a row"
        return None

    async def _next_request(self) -> h11.Request | None:
        """The next request head, or ``None`` when the connection is over."""
        self.received = bytearray(self.h11.trailing_data[0])
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error(exc.error_status_hint)
                return None
            if isinstance(event, h11.Request):
                ambiguous = framing_error(event.headers)
                if ambiguous is not None:
                    # Answered before any of the body is read: the connection
                    # closes after the answer, so whatever follows is never parsed.
                    refusal = self.app.refusal(400, ambiguous, now=time.time())
                    await self._send(refusal, close=True)
                    return None
                self._read_rest_if_buffered()
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed: the client is gone
            data = await self._receive()
            if data is None:
                return None
            self.received += data
            self.h11.receive_data(bytes(data))

    def _read_rest_if_buffered(self) -> None:
        """Consume the end of the request when it is already here (a GET has no body),
        so the connection can be kept alive. A body still to come is not waited
        for: no route takes one, and the connection closes after the response."""
        while self.h11.their_state is h11.SEND_BODY:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return

    async def _receive(self) -> bytes | bytearray | None:
        """Read from the client; ``b""`` at its end, ``None`` when the server drains
        while this connection waits between requests."""
        # Never more than the head limit allows, so h11 sees an oversized head while
        # it is still incomplete, and answers 431.
        size = max(1, min(RECEIVE_SIZE, MAX_HEAD_BYTES + 1 - len(self.received)))
        between_requests = self.h11.their_state is h11.IDLE and not self.received
        if not between_requests:
            return await self._receive_some(size)
        if self.draining.is_set():
            return None
        data: bytes | bytearray | None = None
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                nonlocal data
                data = await self._receive_some(size)
                nursery.cancel_scope.cancel()

            nursery.start_soon(receive)
            await self.draining.wait()
            nursery.cancel_scope.cancel()
        return data

    async def _receive_some(self, size: int = RECEIVE_SIZE) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _send(
        self, response: HttpResponse, *, head_only: bool = False, close: bool = False
    ) -> bool:
        """Send ``response``; return whether the connection can take another request
        (never when ``close``)."""
        close = close or self.draining.is_set() or self.h11.their_state is not h11.DONE
        headers = [*response.headers]
        if response.status != HTTPStatus.NOT_MODIFIED:
            headers.append(("Content-Length", str(len(response.body))))
        if close:
            headers.append(("Connection", "close"))
        data = self.h11.send(
            h11.Response(
                status_code=response.status,
                headers=headers,
                reason=HTTPStatus(response.status).phrase.encode(),
            )
        )
        assert data is not None
        if response.body and not head_only:
            data += self.h11.send(h11.Data(data=response.body)) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.app.metrics.http_response(response.status)
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            # Bytes already here are the next request, sent before this answer.
            self.pipelined = self.pipelined + 1 if self.h11.trailing_data[0] else 0
            return True
        await self._linger()
        return False

    async def _send_error(self, status: int) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = status if 400 <= status < 600 else 400
        await self._send(self.app.error(status, now=time.time()))

    async def _linger(self) -> None:
        """Tell the client we are done, and read what it still sends, briefly."""
        with trio.move_on_after(CLOSE_LINGER_S):
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                try:
                    await self.stream.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            while await self._receive_some():
                pass
