"""The soak's behaviours: what a client does, again and again, for the whole run.

Each behaviour is one short visit to the server (a session, or a handshake that
is meant to fail) that counts what happened on the :class:`~soak_client.Tally`;
:func:`client_loop` picks them at random, by weight, until the deadline. A
behaviour that takes longer than ``OP_TIMEOUT_S`` is cancelled and noted as a
surprise; so is a connection error where none should happen.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable

import trio
from soak_attacks import (
    echoes,
    fragments,
    heartbeat_interrupts,
    log_floods,
    malformed_frames,
    pings,
)
from soak_client import (
    MAX_INPUT_BYTES,
    MAX_MESSAGE_BYTES,
    OP_TIMEOUT_S,
    SEND_TIMEOUT_S,
    Server,
    Tally,
    reset,
    session,
    tcp,
)
from soak_http_attacks import (
    address_hoards,
    bad_handshakes,
    metrics_pipelines,
    rebinds,
    smuggles,
    token_names,
)
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, wrap_client_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage


async def streams(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        for _ in range(rng.randint(1, 3)):
            rid = c.next_id("r")
            words = rng.randint(10, 300)
            await c.request(rid, words, rng.choice([0, 0, 1000]))
            done = await c.done_of(rid)
            if done["payload"] != {"status": "completed", "interrupted": False, "frames": words}:
                tally.surprise(f"stream DONE {done['payload']}")
        c.finish()


async def interrupts(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        rid = c.next_id("r")
        await c.request(rid, 1_000_000, rng.choice([0, 200, 1000]))
        wanted = rng.randint(1, 10)
        await c.until(
            lambda f: (
                f["msg_type"] == "STREAM"
                and f["request_id"] == rid
                and f["payload"]["seq"] >= wanted - 1
            )
        )
        style = rng.choice(["one", "all", "burst", "all-then-request"])
        started = time.perf_counter()
        if style == "burst":
            ids = [await c.interrupt(rid), await c.interrupt(None), await c.interrupt(rid)]
        else:
            ids = [await c.interrupt(rid if style == "one" else None)]
        follow = None
        if style == "all-then-request":
            follow = c.next_id("r")
            await c.request(follow, 5, 0)
        for msg_id in ids:
            await c.answer_to(msg_id)
            tally.ack_ms.append((time.perf_counter() - started) * 1000)
        done = await c.done_of(rid)
        if not done["payload"]["interrupted"]:
            tally.surprise(f"interrupted request ended {done['payload']}")
        if follow is not None and (await c.done_of(follow))["payload"]["status"] != "completed":
            tally.surprise("the REQUEST right after an interrupt-all did not complete")
        c.finish()


def bad_frames(rng: random.Random) -> str | bytes:
    """One frame the server must refuse (with an ERROR), picked at random."""
    frames: list[str | bytes] = [
        "{not json",
        "[1, 2, 3]",
        "null",
        '{"msg_type": "STREAM", "msg_id": "x"}',
        '{"msg_type": "REQUEST", "msg_id": "q"}',
        '{"msg_type": "REQUEST", "request_id": "bad id!", "payload": {"input": ""}}',
        '{"msg_type": "INTERRUPT", "msg_id": "\\ud800"}',
        '{"msg_type": "HEARTBEAT"}',
        json.dumps(
            {
                "msg_type": "REQUEST",
                "request_id": "big",
                "payload": {"input": "x" * (MAX_INPUT_BYTES + 1)},
            }
        ),
        json.dumps(
            {
                "msg_type": "REQUEST",
                "request_id": "u",
                "payload": {"input": "", "agent": "nope"},
            }
        ),
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))),
        "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 40))),
    ]
    return rng.choice(frames)


async def garbage(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        count = rng.randint(1, 15)
        for _ in range(count):
            await c.send_bad(bad_frames(rng))
        for _ in range(count):
            await c.until(lambda f: f["msg_type"] == "ERROR")
        if rng.random() < 0.15:
            await c.send_bad("x" * (MAX_MESSAGE_BYTES + 1))
            code = await c.until_closed()
            tally.counts[f"closed {code} (oversized message)"] += 1
            return
        c.finish()


async def heartbeats(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        for _ in range(rng.randint(1, 5)):
            msg_id = c.next_id("h")
            started = time.perf_counter()
            await c.send({"msg_type": "HEARTBEAT", "msg_id": msg_id})
            await c.answer_to(msg_id)
            tally.heartbeat_ms.append((time.perf_counter() - started) * 1000)
        c.finish()


async def stalls(server: Server, tally: Tally, rng: random.Random) -> None:
    pause = rng.random() < 0.5
    async with session(server, tally, rng, rcvbuf=4096) as c:
        rid = c.next_id("r")
        if pause:
            # A paced stream and a pause shorter than send_timeout_s: nothing is
            # lost, nothing is cut.
            await c.request(rid, 200, 200)
            await c.until(lambda f: f["msg_type"] == "STREAM")
            await trio.sleep(rng.uniform(0.1, SEND_TIMEOUT_S / 2))
            await c.done_of(rid)
            tally.counts["stalls resumed"] += 1
            c.finish()
            return
        await c.request(rid, 1_000_000, 0)
        await c.until(lambda f: f["msg_type"] == "STREAM")
        # Stop reading until the server gives up on us: the kernel buffers fill
        # (megabytes on loopback), then send_timeout_s passes without progress and
        # the connection is reset.
        await trio.sleep(SEND_TIMEOUT_S + 8)
        code = None
        with trio.move_on_after(5):
            try:
                code = await c.until_closed()
            except trio.BrokenResourceError:
                code = -2
        if code is None:
            # Still streaming: the kernel buffers had not filled yet (a busy
            # machine). Not a fault of the server's; leave without draining them.
            tally.counts["stalls outlasted by the buffers (client left)"] += 1
            reset(c.stream)
        else:
            aborted = code in (-2, 1006)
            tally.counts[
                "stalls aborted by the server" if aborted else f"stalls closed {code}"
            ] += 1


async def raw_handshake(
    server: Server, stream: trio.SocketStream, rng: random.Random
) -> WSConnection:
    """Open a WebSocket byte by byte (wsproto), to be able to leave mid-frame."""
    ws = WSConnection(ConnectionType.CLIENT)
    target, subprotocols, headers = server.credentials(rng)
    request = Request(
        host="127.0.0.1", target=target, subprotocols=subprotocols, extra_headers=headers
    )
    await stream.send_all(ws.send(request))
    while True:
        ws.receive_data(await stream.receive_some())
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            return ws


async def vanishes(server: Server, tally: Tally, rng: random.Random) -> None:
    where = rng.choice(["mid-stream", "after-request", "mid-handshake", "mid-frame", "mid-close"])
    tally.counts[f"vanished {where}"] += 1
    if where in ("mid-stream", "after-request"):
        async with session(server, tally, rng) as c:
            rid = c.next_id("r")
            await c.request(rid, 100_000, rng.choice([0, 500]))
            if where == "mid-stream":
                for _ in range(rng.randint(1, 20)):
                    await c.recv()
            reset(c.stream)
            await trio.aclose_forcefully(c.stream)
        return
    stream = await tcp(server.port)
    async with stream:
        if where == "mid-handshake":
            await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
        else:
            ws = await raw_handshake(server, stream, rng)
            if where == "mid-frame":
                frame = ws.send(
                    TextMessage(data=json.dumps({"msg_type": "HEARTBEAT", "msg_id": "x" * 500}))
                )
                await stream.send_all(frame[: len(frame) // 2])
            else:
                await stream.send_all(ws.send(CloseConnection(code=1000)))
        reset(stream)


async def floods(server: Server, tally: Tally, rng: random.Random) -> None:
    async with session(server, tally, rng) as c:
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                # Bursts of 50 frames every 50 ms (up to 1000 frames/s, as TCP
                # allows) until the server closes: twenty times the rate limit,
                # without starving the other clients of this process.
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        for _ in range(50):
                            await c.wire.send_raw(
                                json.dumps({"msg_type": "HEARTBEAT", "msg_id": c.next_id("f")})
                            )
                            tally.counts["frames sent"] += 1
                            tally.counts["flood frames"] += 1
                        await trio.sleep(0.05)

            nursery.start_soon(flood)
            code = None
            with trio.move_on_after(20):
                code = await c.until_closed()
            nursery.cancel_scope.cancel()
        if code is None:
            tally.surprise("a flood was not closed within 20 s")
        else:
            tally.counts[f"floods closed {code}"] += 1


async def trespasses(server: Server, tally: Tally, rng: random.Random) -> None:
    attempt = rng.choice(["wrong token", "no token", "foreign origin"])
    headers: list[tuple[bytes, bytes]] = []
    target = "/ws"
    if attempt == "wrong token":
        target = "/ws?token=not-the-token"
    elif attempt == "foreign origin":
        headers = [
            (b"origin", b"http://evil.example"),
            (b"authorization", f"Bearer {server.token}".encode()),
        ]
    stream = await tcp(server.port)
    try:
        async with trio.open_nursery() as nursery:
            try:
                await wrap_client_stream(
                    nursery, stream, "127.0.0.1", target, extra_headers=headers
                )
                tally.surprise(f"{attempt}: let in")
            except ConnectionRejected as rejected:
                tally.counts[f"refused {rejected.status_code} ({attempt})"] += 1
            nursery.cancel_scope.cancel()
    except* (ConnectionRejected, ConnectionClosed, HandshakeError) as group:
        for exc in group.exceptions:
            if isinstance(exc, ConnectionRejected):
                tally.counts[f"refused {exc.status_code} ({attempt})"] += 1
    finally:
        await trio.aclose_forcefully(stream)


BEHAVIOURS: list[tuple[Callable[[Server, Tally, random.Random], Awaitable[None]], int]] = [
    (streams, 4),
    (interrupts, 5),
    (garbage, 3),
    (heartbeats, 2),
    (stalls, 1),
    (vanishes, 3),
    (floods, 1),
    (trespasses, 1),
    # The attacks of the second hardening round (soak_attacks.py, soak_http_attacks.py).
    # The heavy ones run one at a time (a client that finds one running moves on).
    (echoes, 1),
    (log_floods, 1),
    (heartbeat_interrupts, 1),
    (malformed_frames, 1),
    (fragments, 1),
    (pings, 1),
    (rebinds, 1),
    (metrics_pipelines, 1),
    (smuggles, 1),
    (token_names, 1),
    (bad_handshakes, 1),
    (address_hoards, 1),
]
#: Left out of the warm-up: they take seconds, or would grow the server's memory
#: before the baseline is taken.
NOT_IN_WARM_UP = {stalls, echoes, log_floods, fragments, pings, address_hoards}


async def warm_up(server: Server) -> None:
    """Every behaviour once (but those of ``NOT_IN_WARM_UP``), so that imports and
    first-use caches are paid before the baseline is taken."""
    warm = Tally()
    for i, (behaviour, _) in enumerate(BEHAVIOURS):
        if behaviour not in NOT_IN_WARM_UP:
            with trio.fail_after(OP_TIMEOUT_S):
                await behaviour(server, warm, random.Random(i))


async def client_loop(
    server: Server, tally: Tally, seed: int, deadline: float, skip: set[str]
) -> None:
    rng = random.Random(seed)
    chosen = [(b, w) for b, w in BEHAVIOURS if b.__name__ not in skip]
    behaviours, weights = zip(*chosen, strict=True)
    while trio.current_time() < deadline:
        await trio.lowlevel.checkpoint()  # even if a behaviour returns without one
        behaviour = rng.choices(behaviours, weights)[0]
        tally.counts[f"ran {behaviour.__name__}"] += 1
        try:
            with trio.fail_after(OP_TIMEOUT_S):
                await behaviour(server, tally, rng)
        except* trio.TooSlowError:
            tally.surprise(f"{behaviour.__name__} took more than {OP_TIMEOUT_S} s")
        except* (ConnectionClosed, trio.BrokenResourceError, HandshakeError, OSError) as group:
            tally.surprise(f"{behaviour.__name__}: {group.exceptions[0]!r}")
