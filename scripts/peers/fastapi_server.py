"""The stack this project grew out of, written as a competent FastAPI user would.

A peer of the benchmark (``scripts/bench_interrupt.py``), next to the asyncio +
``websockets`` design: FastAPI on uvicorn (uvloop, httptools, and uvicorn's own
WebSocket protocol: its default, or the one ``--ws`` names). It speaks the same
protocol subset as ``scripts/peers/asyncio_server.py``, field for field (SESSION,
STREAM, DONE with ``interrupted`` and ``frames``, INTERRUPT_ACK with its
``targets``, the HEARTBEAT reply, ERROR), so the same load generator drives it.

The shape is the usual one:

* an ``@app.websocket`` handler that reads messages in a loop;
* a ``ConnectionManager`` whose ``send_json`` every frame goes through
  (Starlette's ``send_json``: compact JSON, written to the transport at once;
  a send waits only while uvicorn's transport is over its high-water mark);
* one ``asyncio.create_task`` per REQUEST, kept in a dict by ``request_id``;
* an INTERRUPT handled in its own task, which calls ``task.cancel()`` on the
  requests it cuts and sends the INTERRUPT_ACK. A cancelled request task catches
  ``CancelledError``, sends its DONE (``interrupted: true`` and the frames it
  sent) and re-raises. ``task.cancel()`` interrupts the request wherever it
  waits: its pacing sleep or a send held back by backpressure, so no frame of it
  leaves after the cancel.

``--tcp-notsent-lowat N`` sets Linux's ``TCP_NOTSENT_LOWAT`` on every accepted
socket (an HTTP protocol subclass does it in ``connection_made``, before the
WebSocket upgrade, and reads it back with ``getsockopt``; the value is logged
once): the option Trio sets to 16 KiB on its own TCP streams.

Run: ``python scripts/peers/fastapi_server.py --port 8768 [--ws websockets]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from trio_agent.agents import lorem_deltas

MAX_CONCURRENT_REQUESTS = 8
FINISHED_MEMORY = 512
#: Linux's TCP_NOTSENT_LOWAT (``socket`` names it only on some builds).
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
#: uvicorn's WebSocket implementations (``uvicorn --ws``); "auto" is its default.
WS_IMPLEMENTATIONS = ("auto", "websockets-sansio", "websockets", "wsproto")

log = logging.getLogger("fastapi_peer")
app = FastAPI()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ConnectionManager:
    """The connections being served, and the one way a frame is sent."""

    def __init__(self) -> None:
        self.active_connections: set[WebSocket] = set()

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.add(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        self.active_connections.discard(websocket)

    async def send_json(self, websocket: WebSocket, message: dict[str, Any]) -> None:
        await websocket.send_json(message)


manager = ConnectionManager()


class Session:
    """One connection's state: its running requests (tasks) and its frame ids."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.session_id = f"{id(self):x}"[-16:]
        self.running: dict[str, asyncio.Task[None]] = {}
        self.finished: dict[str, None] = {}
        self.reasons: dict[str, str] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()

    def frame(self, msg_type: str, payload: dict[str, Any], **envelope: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"msg_id": f"s{next(self._ids)}", "session_id": self.session_id}
        message.update((k, v) for k, v in envelope.items() if v is not None)
        message["ts"] = now_ms()
        message["msg_type"] = msg_type
        message["payload"] = payload
        return message

    async def send(self, msg_type: str, payload: dict[str, Any], **envelope: Any) -> None:
        await manager.send_json(self.websocket, self.frame(msg_type, payload, **envelope))

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def forget(self, request_id: str) -> None:
        self.running.pop(request_id, None)
        self.finished[request_id] = None
        if len(self.finished) > FINISHED_MEMORY:
            del self.finished[next(iter(self.finished))]

    async def error(self, code: str, message: str, **envelope: Any) -> None:
        await self.send("ERROR", {"code": code, "message": message}, **envelope)

    async def handle(self, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            await self.error("INVALID_JSON", "not valid JSON text")
            return
        if not isinstance(msg, dict):
            await self.error("INVALID_MESSAGE", "a message must be a JSON object")
            return
        kind, msg_id, rid = msg.get("msg_type"), msg.get("msg_id"), msg.get("request_id")
        if kind == "REQUEST":
            await self.start(msg, msg_id, rid)
        elif kind == "INTERRUPT":
            reason = (msg.get("payload") or {}).get("reason") or "USER_NEW_INPUT"
            self.spawn(self.interrupt(msg_id, rid, reason))
        elif kind == "HEARTBEAT":
            await self.send("HEARTBEAT", {}, ref=msg_id)
        else:
            await self.error(
                "UNKNOWN_MSG_TYPE", f"{kind!r} is not a client message type", ref=msg_id
            )

    async def start(self, msg: dict[str, Any], msg_id: Any, rid: Any) -> None:
        payload = msg.get("payload")
        if not isinstance(rid, str) or not isinstance(payload, dict):
            await self.error("INVALID_MESSAGE", "REQUEST needs request_id and payload", ref=msg_id)
            return
        if rid in self.running:
            await self.error("DUPLICATE_REQUEST_ID", "already running", ref=msg_id, request_id=rid)
            return
        if len(self.running) >= MAX_CONCURRENT_REQUESTS:
            await self.error("TOO_MANY_REQUESTS", "limit reached", ref=msg_id, request_id=rid)
            return
        options = payload.get("options") or {}
        self.running[rid] = self.spawn(
            self.run_request(
                rid,
                msg_id,
                lorem_deltas(int(options.get("words", 50))),
                float(options.get("words_per_s", 20)),
                payload.get("timeout_s"),
            )
        )

    async def run_request(
        self,
        request_id: str,
        ref: Any,
        words: Iterator[str],
        words_per_s: float,
        timeout_s: float | None,
    ) -> None:
        interval = 1.0 / words_per_s if words_per_s > 0 else 0.0
        frames = 0
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    for seq, word in enumerate(words):
                        # The next word "arrives": the wait for an upstream token.
                        await asyncio.sleep(interval if seq else 0)
                        await self.send(
                            "STREAM", {"seq": seq, "delta": word}, request_id=request_id
                        )
                        frames += 1
                status = "completed"
            except TimeoutError:
                status = "timeout"
        except asyncio.CancelledError:
            done = {"status": "interrupted", "interrupted": True, "frames": frames}
            if request_id in self.reasons:
                done["reason"] = self.reasons.pop(request_id)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.send("DONE", done, request_id=request_id, ref=ref)
            raise
        if self.running.get(request_id) is asyncio.current_task():
            self.forget(request_id)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.send(
                "DONE",
                {"status": status, "interrupted": False, "frames": frames},
                request_id=request_id,
                ref=ref,
            )

    async def interrupt(self, msg_id: Any, rid: Any, reason: str) -> None:
        targets: dict[str, str] = {}
        if rid is None:
            cut = list(self.running)
        elif rid in self.running:
            cut = [rid]
        else:
            cut = []
            targets[rid] = "already_done" if rid in self.finished else "unknown"
        for request_id in cut:
            self.reasons[request_id] = reason
            self.running[request_id].cancel()
            self.forget(request_id)
        ack = {
            "interrupted": cut,
            "interrupted_count": len(cut),
            "reason": reason,
            "targets": targets,
        }
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.send("INTERRUPT_ACK", ack, request_id=rid, ref=msg_id)

    async def close(self) -> None:
        """The connection is gone: cancel whatever still runs and wait for it."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await manager.connect(websocket)
    session = Session(websocket)
    try:
        await session.send(
            "SESSION",
            {
                "protocol": "1.0",
                "server": "fastapi-baseline/1",
                "agents": {"lorem": {"description": "placeholder text"}},
                "default_agent": "lorem",
                "limits": {"max_concurrent_requests": MAX_CONCURRENT_REQUESTS},
            },
        )
        while True:
            await session.handle(await websocket.receive_text())
    except WebSocketDisconnect:
        pass
    finally:
        manager.disconnect(websocket)
        await session.close()


def notsent_lowat_protocol(lowat: int) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol with ``TCP_NOTSENT_LOWAT`` set on every accepted socket.

    The WebSocket protocol takes over the same transport after the upgrade, so the
    option holds for the whole connection. The first connection logs the value read
    back from the socket, so a run's log shows that the kernel took it.
    """

    class NotSentLowatHttpToolsProtocol(HttpToolsProtocol):
        logged = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, lowat)
            if not NotSentLowatHttpToolsProtocol.logged:
                NotSentLowatHttpToolsProtocol.logged = True
                value = sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
                log.warning("TCP_NOTSENT_LOWAT on an accepted socket: %d", value)
            super().connection_made(transport)

    return NotSentLowatHttpToolsProtocol


def config(host: str, port: int, ws: str, lowat: int) -> uvicorn.Config:
    """uvicorn's settings: its defaults, but for the port, ``ws`` and the backlog."""
    http: type[asyncio.Protocol] | str = notsent_lowat_protocol(lowat) if lowat else "auto"
    return uvicorn.Config(app, host=host, port=port, ws=ws, http=http, backlog=1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument(
        "--ws", choices=WS_IMPLEMENTATIONS, default="auto", help="uvicorn's WebSocket protocol"
    )
    parser.add_argument(
        "--tcp-notsent-lowat",
        type=int,
        default=0,
        metavar="BYTES",
        help="set TCP_NOTSENT_LOWAT on accepted sockets (0: leave the system default)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.Server(config(args.host, args.port, args.ws, args.tcp_notsent_lowat)).run()


if __name__ == "__main__":
    main()
