"""A minimal HTTP/1.1 client on h11 for the tests of the server's HTTP routes.

It sends exactly the request line and headers it is given (so tests can send
traversal attempts and wrong methods a polite client never would) and reads one
response per request, over any Trio stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h11
import trio

from trio_agent import AgentServer


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class HttpClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(
        self,
        target: str | bytes,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        target = target.encode() if isinstance(target, str) else target
        all_headers = [("Host", "127.0.0.1"), *headers]
        if body:
            all_headers.append(("Content-Length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
        if body:
            data += self.h11.send(h11.Data(data=body)) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)

    async def receive(self) -> Response:
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some())
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the server closed the connection")
        assert response is not None
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = {k.decode().lower(): v.decode() for k, v in response.headers}
        return Response(response.status_code, headers, body)

    async def request(self, target: str | bytes, method: str = "GET", **kw: object) -> Response:
        await self.send(target, method, **kw)  # type: ignore[arg-type]
        return await self.receive()


async def fetch(
    server: AgentServer, target: str | bytes, method: str = "GET", **kw: object
) -> Response:
    """One request on a fresh loopback connection."""
    assert server.port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        return await HttpClient(stream).request(target, method, **kw)


async def raw_exchange(server: AgentServer, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection; return everything until the server closes."""
    assert server.port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
        return received
