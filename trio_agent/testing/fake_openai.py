"""A fake OpenAI-compatible chat completions server, for tests, benchmarks and demos.

Each request follows a :class:`Script`; it records every request and the moment its
client disconnected. ``docs/agents.md`` (the fake upstream) shows how to run it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import trio

#: How a scripted stream ends once its tokens are sent.
Ending = Literal[
    "finish",  # a finish_reason chunk, then data: [DONE]
    "finish_without_done",  # a finish_reason chunk and the end of the body (older servers)
    "eof",  # the end of the body, with neither
    "hang",  # nothing more, until the client goes away
    "bad_json",  # an event whose data is not JSON, then hang
    "bad_chunk",  # JSON that is not a chunk, then hang
    "error_event",  # data: {"error": {...}} mid-stream, then data: [DONE]
    "drop",  # close the TCP connection in the middle of the body
]

_EVENT_STREAM = "text/event-stream; charset=utf-8"


@dataclass(frozen=True)
class Script:
    """What the fake does with one request."""

    tokens: Sequence[str] = ("Hello", ",", " world", "!")
    #: Pace of the tokens; 0 sends them as fast as the socket takes them.
    tokens_per_s: float = 0.0
    #: Send only this many tokens, then :attr:`then` (``None``: all of them).
    stop_after: int | None = None
    then: Ending = "finish"
    finish_reason: str = "stop"
    #: Anything but 200 answers with that status and an OpenAI-style error body
    #: (with ``then="hang"``: half of it, then nothing).
    status: int = 200
    error_message: str = "the fake upstream refused the request"
    #: Never answer: accept the request and wait for the client to give up.
    hang_before_headers: bool = False
    content_type: str = _EVENT_STREAM

    @classmethod
    def counting(cls, count: int, prefix: str = "t", **kwargs: Any) -> Script:
        """``count`` tokens ``" t0", " t1", ...``: distinct, so a test can tell
        which request a token came from."""
        return cls(tokens=tuple(f" {prefix}{i}" for i in range(count)), **kwargs)


@dataclass(eq=False)
class FakeRequest:
    """One request the fake received, and what became of it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    #: Content tokens written to the socket.
    tokens_sent: int = 0
    #: Set once the script's tokens are written, before its ending.
    tokens_done: trio.Event = field(default_factory=trio.Event)
    #: Set when the client closed the connection before the answer was complete.
    disconnected: trio.Event = field(default_factory=trio.Event)
    #: ``trio.current_time()`` at that moment.
    disconnected_at: float | None = None
    #: ``time.monotonic()`` at that moment: comparable across processes.
    disconnected_monotonic: float | None = None
    #: Set when the answer has been written completely.
    answered: trio.Event = field(default_factory=trio.Event)
    #: Set when the fake is done with the request, whichever way it ended.
    ended: trio.Event = field(default_factory=trio.Event)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``messages`` of a chat completions request."""
        messages = self.body.get("messages", []) if isinstance(self.body, dict) else []
        return list(messages)


class _Dropped(Exception):
    """The script asked for the connection to be dropped."""


class FakeOpenAI:
    """A fake upstream on a local port. ``fake = await nursery.start(FakeOpenAI().run)``.

    :param default: the script of requests when none is queued (:meth:`enqueue`).
    :param api_key: when set, a request without ``Authorization: Bearer <api_key>``
        gets a 401 whose message quotes the key it was given, as a careless
        upstream might.
    """

    def __init__(
        self,
        default: Script | None = None,
        *,
        api_key: str | None = None,
        model: str = "fake-model",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.default = default or Script()
        self.api_key = api_key
        self.model = model
        self.host = host
        self.port = port
        self.requests: list[FakeRequest] = []
        self.open_connections = 0
        self._scripts: deque[Script] = deque()
        self._ids = itertools.count()
        self._arrival = trio.Event()

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` should be to talk to this fake."""
        return f"http://{self.host}:{self.port}/v1"

    def enqueue(self, *scripts: Script) -> None:
        """Answer the next requests with these scripts, in order (then :attr:`default`)."""
        self._scripts.extend(scripts)

    async def wait_for_requests(self, count: int) -> FakeRequest:
        """Wait until ``count`` requests have arrived; return the ``count``-th."""
        while len(self.requests) < count:
            await self._arrival.wait()
        return self.requests[count - 1]

    async def run(
        self, *, task_status: trio.TaskStatus[FakeOpenAI] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._serve_connection, listeners)

    # ------------------------------------------------------------------ HTTP

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _read_request(conn, stream)
                if request is None:
                    return
                self.requests.append(request)
                self._arrival.set()
                self._arrival = trio.Event()
                if not await self._answer(conn, stream, request):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.open_connections -= 1
            await trio.aclose_forcefully(stream)

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, request: FakeRequest
    ) -> bool:
        """Answer while a second task watches for the client leaving. Returns whether
        the connection can serve another request."""
        dropped = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_for_disconnect, conn, stream, request, nursery.cancel_scope)
            try:
                await self._respond(conn, stream, request)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                _mark_disconnected(request)
            except _Dropped:
                dropped = True
            else:
                request.answered.set()
            nursery.cancel_scope.cancel()
        request.ended.set()
        return not dropped and not request.disconnected.is_set()

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: FakeRequest
    ) -> None:
        async def send(event: h11.Event) -> None:
            data = conn.send(event)
            if data:
                await stream.send_all(data)

        if request.method != "POST" or request.path.rstrip("/") != "/v1/chat/completions":
            await _send_json(
                send, 404, _error_body(f"no route for {request.method} {request.path}")
            )
            return
        given = request.headers.get("authorization", "")
        if self.api_key is not None and given != f"Bearer {self.api_key}":
            await _send_json(
                send,
                401,
                _error_body(f"Incorrect API key provided: {given.removeprefix('Bearer ')}"),
            )
            return
        script = self._scripts.popleft() if self._scripts else self.default
        if script.hang_before_headers:
            await trio.sleep_forever()
        if script.status != 200:
            body = _error_body(script.error_message)
            await _send_json(send, script.status, body, hang=script.then == "hang")
            return
        await send(
            h11.Response(
                status_code=200,
                headers=[("content-type", script.content_type), ("cache-control", "no-cache")],
            )
        )
        chunk_id = f"chatcmpl-fake{next(self._ids)}"

        async def event(data: str) -> None:
            await send(h11.Data(data=f"data: {data}\n\n".encode()))

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
            return _chunk(chunk_id, self.model, delta, finish_reason)

        await event(chunk({"role": "assistant", "content": ""}))
        interval = 1.0 / script.tokens_per_s if script.tokens_per_s > 0 else 0.0
        for i, token in enumerate(itertools.islice(script.tokens, script.stop_after)):
            if interval and i:
                await trio.sleep(interval)
            await event(chunk({"content": token}))
            request.tokens_sent += 1
        request.tokens_done.set()
        then = script.then
        if then in ("finish", "finish_without_done"):
            await event(chunk({}, script.finish_reason))
            if then == "finish":
                await event("[DONE]")
        elif then == "error_event":
            await event(
                json.dumps({"error": {"message": script.error_message, "type": "server_error"}})
            )
            await event("[DONE]")
        elif then == "drop":
            raise _Dropped
        elif then != "eof":
            if then == "bad_json":
                await event('{"choices": [{"delta": {"content": "unfinished')
            elif then == "bad_chunk":
                await event('{"choices": "not a list"}')
            await trio.sleep_forever()
        await send(h11.EndOfMessage())


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> FakeRequest | None:
    """Read one request (head and body); ``None`` when the client closed instead."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            return FakeRequest(
                method=head.method.decode(),
                path=head.target.decode(),
                headers={k.decode().lower(): v.decode() for k, v in head.headers},
                body=parsed,
            )
        else:
            return None  # ConnectionClosed, or PAUSED after a protocol switch


async def _watch_for_disconnect(
    conn: h11.Connection, stream: trio.SocketStream, request: FakeRequest, answer: trio.CancelScope
) -> None:
    """Read the socket while the answer is written: an EOF means the client left.

    Bytes that do arrive (a pipelined next request) are handed to h11, which keeps
    them for the next cycle.
    """
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            _mark_disconnected(request)
            answer.cancel()
            return
        conn.receive_data(data)


def _mark_disconnected(request: FakeRequest) -> None:
    if not request.disconnected.is_set() and not request.answered.is_set():
        request.disconnected_at = trio.current_time()
        request.disconnected_monotonic = time.monotonic()
        request.disconnected.set()


def _chunk(chunk_id: str, model: str, delta: dict[str, str], finish_reason: str | None) -> str:
    return json.dumps(
        {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        },
        separators=(",", ":"),
    )


def _error_body(message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }


async def _send_json(
    send: Callable[[h11.Event], Awaitable[None]],
    status: int,
    body: dict[str, Any],
    *,
    hang: bool = False,
) -> None:
    """Send ``body``; with ``hang``, only its first half, then wait for the client to go."""
    data = json.dumps(body).encode()
    await send(
        h11.Response(
            status_code=status,
            headers=[("content-type", "application/json"), ("content-length", str(len(data)))],
        )
    )
    if hang:
        await send(h11.Data(data=data[: len(data) // 2]))
        await trio.sleep_forever()
    await send(h11.Data(data=data))
    await send(h11.EndOfMessage())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m trio_agent.testing.fake_openai",
        description="A fake OpenAI-compatible chat completions server (no model, canned tokens).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--tokens-per-s", type=float, default=20.0, help="0: as fast as possible")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print JSON lines: where it listens, then each client disconnect (time.monotonic())",
    )
    args = parser.parse_args(argv)
    fake = FakeOpenAI(
        Script.counting(args.tokens, prefix="token", tokens_per_s=args.tokens_per_s),
        host=args.host,
        port=args.port,
    )

    def report(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    async def report_disconnect(request: FakeRequest, number: int) -> None:
        await request.ended.wait()
        if request.disconnected.is_set():
            report(event="disconnected", request=number, monotonic=request.disconnected_monotonic)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.run)
            if not args.report:
                print(
                    f"fake OpenAI-compatible upstream: OPENAI_BASE_URL={fake.base_url}", flush=True
                )
                return
            report(event="listening", base_url=fake.base_url)
            for number in itertools.count(1):
                request = await fake.wait_for_requests(number)
                nursery.start_soon(report_disconnect, request, number)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)


if __name__ == "__main__":
    main()
