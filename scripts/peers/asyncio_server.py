"""The design trio-agent replaces, written fairly and well: asyncio + ``websockets``.

This is the benchmark's second baseline. It speaks protocol v1 (the same frames,
field for field) so the same load generator drives it, and it is built the way
the seed system was, with everything a careful asyncio programmer would add:

* one ``asyncio`` task per request, kept in a dict by ``request_id``;
* an ``asyncio.Event`` per request as its cancel flag, checked by the agent loop
  right before every send (no ``await`` between the check and the write, so no
  frame leaves after the loop has seen the flag);
* INTERRUPT is handled in its own task (``asyncio.create_task``): it sets the
  flags, marks the requests as ended (so a second INTERRUPT reports them as
  ``already_done``) and sends the INTERRUPT_ACK; the request task sends its own
  DONE when it sees the flag;
* every frame is sent directly with ``await ws.send(...)`` from the task that
  produced it. ``websockets`` writes to the transport at once and only waits when
  the transport buffer is over its high-water mark (32 KiB): that is the
  backpressure;
* the agent's wait between words stands for the wait for the next token from an
  upstream model: the loop checks the flag when the word arrives, so a cut request
  ends at its next word, not at once. That is the design's defining cost, and the
  benchmark shows it in its INTERRUPT -> DONE figures (the INTERRUPT_ACK, sent by
  the interrupt task, does not wait for it). An agent streaming as fast as it can
  yields (``asyncio.sleep(0)``) once per delta, as an upstream read would, so one
  request cannot starve the event loop.

Run: ``python scripts/peers/asyncio_server.py --port 8766``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from trio_agent.agents import lorem_deltas

MAX_CONCURRENT_REQUESTS = 8
FINISHED_MEMORY = 512


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class Request:
    request_id: str
    ref: str | None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None
    task: asyncio.Task[None] | None = None


class Session:
    """One connection: the handler reads, each request and each interrupt is a task."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.session_id = f"{id(self):x}"[-16:]
        self.running: dict[str, Request] = {}
        self.finished: dict[str, None] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()

    def frame(self, msg_type: str, payload: dict[str, Any], **envelope: Any) -> str:
        message: dict[str, Any] = {"msg_id": f"s{next(self._ids)}", "session_id": self.session_id}
        message.update((k, v) for k, v in envelope.items() if v is not None)
        message["ts"] = now_ms()
        message["msg_type"] = msg_type
        message["payload"] = payload
        return _dumps(message)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def serve(self) -> None:
        await self.ws.send(
            self.frame(
                "SESSION",
                {
                    "protocol": "1.0",
                    "server": "asyncio-baseline/1",
                    "agents": {"lorem": {"description": "placeholder text"}},
                    "default_agent": "lorem",
                    "limits": {"max_concurrent_requests": MAX_CONCURRENT_REQUESTS},
                },
            )
        )
        try:
            async for raw in self.ws:
                await self.handle(raw)
        except ConnectionClosed:
            pass
        finally:
            for request in self.running.values():
                request.cancel.set()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def error(self, code: str, message: str, **envelope: Any) -> None:
        await self.ws.send(self.frame("ERROR", {"code": code, "message": message}, **envelope))

    async def handle(self, raw: str | bytes) -> None:
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
            await self.ws.send(self.frame("HEARTBEAT", {}, ref=msg_id))
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
        request = Request(rid, msg_id)
        self.running[rid] = request
        request.task = self.spawn(
            self.run_request(
                request,
                lorem_deltas(int(options.get("words", 50))),
                float(options.get("words_per_s", 20)),
                payload.get("timeout_s"),
            )
        )

    async def run_request(
        self, request: Request, words: Iterable[str], words_per_s: float, timeout_s: float | None
    ) -> None:
        interval = 1.0 / words_per_s if words_per_s > 0 else 0.0
        frames, status = 0, "completed"
        try:
            async with asyncio.timeout(timeout_s):
                for seq, word in enumerate(words):
                    # The next word "arrives" (see the module docstring).
                    await asyncio.sleep(interval if seq else 0)
                    if request.cancel.is_set():
                        break
                    await self.ws.send(
                        self.frame(
                            "STREAM",
                            {"seq": seq, "delta": word},
                            request_id=request.request_id,
                        )
                    )
                    frames += 1
        except TimeoutError:
            status = "timeout"
        if request.cancel.is_set():
            status = "interrupted"
        else:
            self._forget(request)
        done = {
            "status": status,
            "interrupted": status == "interrupted",
            "frames": frames,
        }
        if request.reason is not None:
            done["reason"] = request.reason
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(
                self.frame("DONE", done, request_id=request.request_id, ref=request.ref)
            )

    def _forget(self, request: Request) -> None:
        if self.running.get(request.request_id) is request:
            del self.running[request.request_id]
        self.finished[request.request_id] = None
        if len(self.finished) > FINISHED_MEMORY:
            del self.finished[next(iter(self.finished))]

    async def interrupt(self, msg_id: Any, rid: Any, reason: str) -> None:
        targets: dict[str, str] = {}
        if rid is None:
            cut = list(self.running.values())
        elif rid in self.running:
            cut = [self.running[rid]]
        else:
            cut = []
            targets[rid] = "already_done" if rid in self.finished else "unknown"
        for request in cut:
            request.reason = reason
            request.cancel.set()
            self._forget(request)
        ack = {
            "interrupted": [r.request_id for r in cut],
            "interrupted_count": len(cut),
            "reason": reason,
            "targets": targets,
        }
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(self.frame("INTERRUPT_ACK", ack, request_id=rid, ref=msg_id))


async def handler(ws: ServerConnection) -> None:
    await Session(ws).serve()


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with serve(handler, host, port, backlog=1024):
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
