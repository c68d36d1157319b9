"""The soak's attacks on a session: what an adversarial pass tried over the WebSocket.

Each attack is a behaviour like those of ``soak_behaviours.py`` (one short visit,
bounded in frames and in time, loopback only) that also counts what the server
answered (``tally.answer``: close codes, ERROR codes, ACKs) and every bound it
saw broken (``tally.breach``), so that the report shows each defence trip, or
not. A broken guarantee (an INTERRUPT refused, a STREAM frame after it) is a
violation, as in every other behaviour.

* echoes: 8 clients that never read, each sending frames that make the server
  echo long strings (msg_id, request_id, reason; ASCII and 4-byte emoji) under the
  rate limit; the bound is the server's RSS (the report's "RSS bound").
* log_floods: INTERRUPTs with long reasons, each cutting 8 requests; the bound is
  the log bytes of the session (the report's "log bytes per session").
* heartbeat_interrupts: a HEARTBEAT burst past the rate limit (195 at once), then an INTERRUPT,
  which must still stop the reply.
* malformed_frames: option numbers of 400 digits, ``timeout_s`` as a string or a
  boolean, ``ts`` as a boolean: each must get ERROR INVALID_MESSAGE.
* fragments / pings: a text frame with FIN=0 and then empty continuation frames,
  or pings, as fast as TCP goes: the connection must be closed (1008).
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from soak_client import MAX_MESSAGE_BYTES, Client, Server, Tally, session
from soak_raw import (
    CONTINUATION,
    PING,
    TEXT,
    ServerFrames,
    client_frame,
    connect,
    exchange,
    handshake_request,
    reset,
)
from trio_websocket import ConnectionClosed

from trio_agent.testing.wire import Frame

#: Non-reading clients in one ``echoes`` pack, each from its own address.
ECHO_PACK = 8
#: How long each of them keeps sending: long enough to fill a 256-frame lane.
ECHO_ATTACK_S = 8.0
#: Under the server's rate limit (50 frames/s, burst 100): a burst, then a pace.
ECHO_BURST, ECHO_PER_S = 90, 40.0
#: Empty continuation frames (or pings) one attack sends at most, and for how long.
FRAME_FLOOD = 100_000
FRAME_FLOOD_S = 5.0
#: The server's default WebSocket frame budget (``--ws-frame-rate-per-s``,
#: ``--ws-frame-burst``): the most frames it may act on in ``t`` seconds is
#: ``burst + rate * t``. A ping flood the server reads no faster than that (a busy
#: server reads slowly) is held by the budget even when it is not closed.
FRAME_BUDGET_RATE_PER_S = 1000
FRAME_BUDGET_BURST = 2000
#: HEARTBEATs sent at once before the INTERRUPT: past the burst of 100, with room for
#: the refill of a busy server's slow reading (95 tokens: nearly 2 s at 50/s), and
#: under the 100 refusals that close a flood.
HEARTBEAT_BURST = 195
#: A 4-byte UTF-8 character: a limit that counts characters lets 4x the bytes in.
EMOJI = "\U0001f600"


@asynccontextmanager
async def alone(server: Server, name: str, cooldown_s: float) -> AsyncIterator[bool]:
    """Whether this client may run the heavy attack ``name`` now: one at a time, with
    ``cooldown_s`` of rest after each (the client holding the turn waits it out)."""
    lock = server.locks.setdefault(name, trio.Lock())
    if lock.locked():
        await trio.sleep(0.05)  # a pause, so that a client that finds it taken never spins
        yield False
        return
    async with lock:
        yield True
        await trio.sleep(cooldown_s)


def remember_session(tally: Tally, attack: str, c: Client) -> None:
    """Note the server's id of ``c``'s session, to find its log lines later."""
    session_id = c.wire.session.get("session_id")
    if isinstance(session_id, str):
        tally.attack_sessions.setdefault(attack, []).append(session_id)


def echo_frame(kind: str) -> bytes:
    """A client text frame (just under the message size limit) whose answer echoes a
    long string: an invalid frame's msg_id or request_id (in its ERROR), or an
    INTERRUPT's reason (in its ACK)."""
    room = MAX_MESSAGE_BYTES - 200
    long = EMOJI * (room // 4) if kind.endswith("emoji") else "x" * room
    frame: dict[str, object]
    if kind.startswith("msg_id"):
        frame = {"msg_type": "STREAM", "msg_id": long}
    elif kind.startswith("request_id"):
        frame = {"msg_type": "REQUEST", "msg_id": "m", "request_id": long, "payload": {}}
    else:
        frame = {"msg_type": "INTERRUPT", "msg_id": "i", "payload": {"reason": long}}
    return client_frame(TEXT, json.dumps(frame, ensure_ascii=False).encode())


async def echo_hoarder(server: Server, tally: Tally, index: int) -> None:
    """One client that (almost) never reads: a 4 KiB receive buffer drained by a
    trickle of 32 KB/s, just enough for the server's writes to pass its send
    timeout, and frames whose answers echo ~64 KB each, sent under the rate limit
    until the server cuts it off or ``ECHO_ATTACK_S`` passes."""
    kinds = ["msg_id", "msg_id emoji", "request_id", "request_id emoji", "reason", "reason emoji"]
    kind = kinds[index % len(kinds)]
    stream = await connect(server.port, source=f"127.0.0.{50 + index}", rcvbuf=4096)
    try:
        auth = [("Authorization", f"Bearer {server.token}")]
        hello = await exchange(
            stream, handshake_request("/ws", "127.0.0.1", auth), expect=1, wait_s=5
        )
        if hello.statuses[:1] != [101]:
            tally.answer("echoes", f"handshake {hello.statuses or 'none'}")
            return
        frame = echo_frame(kind)
        sent = 0
        outcome = f"still open after {ECHO_ATTACK_S:g} s"
        with trio.move_on_after(ECHO_ATTACK_S):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trickle, stream)
                    # The burst in one write, then on a schedule of ECHO_PER_S (a late
                    # wake-up catches up, so a busy client still fills the lane).
                    started = trio.current_time()
                    while True:
                        due = ECHO_BURST + int((trio.current_time() - started) * ECHO_PER_S)
                        if due > sent:
                            await stream.send_all(frame * (due - sent))
                            tally.counts["frames sent"] += due - sent
                            sent = due
                        await trio.sleep(1 / ECHO_PER_S)
            except* (trio.BrokenResourceError, OSError, EOFError):
                outcome = "cut off by the server"
        tally.answer("echoes", outcome)
        tally.counts["echoes: frames sent"] += sent
    finally:
        reset(stream)
        await trio.aclose_forcefully(stream)


async def trickle(stream: trio.SocketStream) -> None:
    """Read 8 KiB every 0.25 s; raise ``EOFError`` when the server has closed."""
    while True:
        if not await stream.receive_some(8192):
            raise EOFError
        await trio.sleep(0.25)


async def echoes(server: Server, tally: Tally, rng: random.Random) -> None:
    """A pack of ``ECHO_PACK`` echo hoarders at once, each from its own address."""
    async with alone(server, "echoes", 1.0) as mine:
        if not mine:
            return
        tally.answer("echoes", "packs of 8 run")
        async with trio.open_nursery() as nursery:
            for index in range(ECHO_PACK):
                nursery.start_soon(echo_hoarder, server, tally, index)


async def log_floods(server: Server, tally: Tally, rng: random.Random) -> None:
    """Three rounds of 8 requests cut by one INTERRUPT with a long reason (64 KB, or 256
    emoji), each read to its last DONE: the log of this session must stay bounded."""
    async with session(server, tally, rng) as c:
        remember_session(tally, "log_floods", c)
        for round_ in range(3):
            rids = [c.next_id("r") for _ in range(8)]
            for rid in rids:
                await c.request(rid, 1_000_000, 50)
            reason = EMOJI * 256 if round_ == 1 else "y" * (MAX_MESSAGE_BYTES - 200)
            msg_id = c.next_id("i")
            await c.send({"msg_type": "INTERRUPT", "msg_id": msg_id, "payload": {"reason": reason}})
            tally.counts["interrupts"] += 1
            answer = await c.answer_to(msg_id)
            if answer["msg_type"] == "ERROR":
                tally.answer("log_floods", f"ERROR {answer['payload'].get('code')}")
                await c.send({"msg_type": "INTERRUPT", "msg_id": c.next_id("i")})
                answer = await c.until(lambda f: f["msg_type"] == "INTERRUPT_ACK")
            else:
                tally.answer("log_floods", f"ACK ({len(reason)} characters of reason)")
            for rid in answer["payload"].get("interrupted") or []:
                await c.done_of(rid)
        c.finish()


async def heartbeat_interrupts(server: Server, tally: Tally, rng: random.Random) -> None:
    """A reply streams; 110 HEARTBEATs go at once (past the burst), then the INTERRUPT.
    Refusing it, or a STREAM frame of the reply after its answer, is a violation."""
    async with session(server, tally, rng) as c:
        rid = c.next_id("r")
        await c.request(rid, 1_000_000, 200)
        await c.until(lambda f: f["msg_type"] == "STREAM" and f["request_id"] == rid)
        # The burst and the INTERRUPT in one write, so that the server reads them
        # back to back (no refill in between): written raw on the TCP stream, the
        # INTERRUPT told to the guarantee checker by hand.
        beats = [
            {"msg_type": "HEARTBEAT", "msg_id": c.next_id("h")} for _ in range(HEARTBEAT_BURST)
        ]
        msg_id = c.next_id("i")
        stop = {"msg_type": "INTERRUPT", "msg_id": msg_id, "request_id": rid}
        c.wire.checker.sent(stop)
        await c.stream.send_all(
            b"".join(client_frame(TEXT, json.dumps(frame).encode()) for frame in [*beats, stop])
        )
        tally.counts["frames sent"] += HEARTBEAT_BURST + 1
        tally.counts["interrupts"] += 1
        try:
            answer = await c.answer_to(msg_id)
        except ConnectionClosed as closed:  # a flood may be closed: that stops the reply too
            code = closed.reason.code if closed.reason is not None else -1
            tally.answer("heartbeat_interrupts", f"closed {code}")
            return
        if answer["msg_type"] == "INTERRUPT_ACK":
            tally.answer("heartbeat_interrupts", "INTERRUPT_ACK")
            done = await c.done_of(rid)
            if not done["payload"].get("interrupted"):
                tally.violation(f"refused interrupts: DONE {done['payload']} after the ACK")
            c.finish()
            return
        code = answer["payload"].get("code")
        tally.answer("heartbeat_interrupts", f"ERROR {code}")
        tally.counts["interrupts refused"] += 1
        tally.violation(f"refused interrupts: the INTERRUPT after a HEARTBEAT burst got {code}")
        late = 0
        with trio.move_on_after(1.0):
            while True:
                frame = await c.recv()
                if frame["msg_type"] == "STREAM" and frame.get("request_id") == rid:
                    late += 1
                elif frame["msg_type"] == "DONE" and frame.get("request_id") == rid:
                    break
        if late:
            tally.counts["STREAM frames after an INTERRUPT"] += late
            tally.violation(f"STREAM frames after an INTERRUPT: {late} in the next second")
        reset(c.stream)


async def malformed_frames(server: Server, tally: Tally, rng: random.Random) -> None:
    """Frames looser than docs/protocol.md allows: each must get ERROR INVALID_MESSAGE."""
    async with session(server, tally, rng) as c:
        cases: list[tuple[str, dict[str, object]]] = [
            ("words of 400 digits", {"options": {"words": 10**400 - 1}}),
            ('timeout_s "5"', {"timeout_s": "5", "options": {"words": 3}}),
            ("timeout_s true", {"timeout_s": True, "options": {"words": 3}}),
        ]
        for what, extra in cases:
            rid, msg_id = c.next_id("r"), c.next_id()
            payload = {"input": "soak", "agent": "lorem", **extra}
            await c.send(
                {"msg_type": "REQUEST", "msg_id": msg_id, "request_id": rid, "payload": payload}
            )
            frame = await c.until(answers_request(rid, msg_id))
            seen = await _seen(c, frame, rid)
            tally.answer("malformed_frames", f"{what}: {seen}")
            if seen != "ERROR INVALID_MESSAGE":
                tally.breach("malformed_frames", f"{what} accepted ({seen})")
        msg_id = c.next_id("h")
        await c.send({"msg_type": "HEARTBEAT", "msg_id": msg_id, "ts": True})
        answer = await c.answer_to(msg_id)
        seen = (
            f"ERROR {answer['payload'].get('code')}"
            if answer["msg_type"] == "ERROR"
            else answer["msg_type"]
        )
        tally.answer("malformed_frames", f"ts true: {seen}")
        if seen != "ERROR INVALID_MESSAGE":
            tally.breach("malformed_frames", f"ts true accepted ({seen})")
        c.finish()


def answers_request(rid: str, msg_id: str) -> Callable[[Frame], bool]:
    """Whether a frame is the DONE of request ``rid``, or the ERROR that refused the
    REQUEST ``msg_id`` (by its request_id, or by its ref if it names no request)."""
    return lambda f: (
        (f["msg_type"] == "DONE" and f.get("request_id") == rid)
        or (f["msg_type"] == "ERROR" and (f.get("request_id") == rid or f.get("ref") == msg_id))
    )


async def _seen(c: Client, frame: dict[str, object], rid: str) -> str:
    """What the server made of a REQUEST: its ERROR code, or its DONE's status (and
    error code), read to the DONE."""
    if frame["msg_type"] == "ERROR":
        payload = frame.get("payload")
        return f"ERROR {payload.get('code') if isinstance(payload, dict) else '?'}"
    done = await c.done_of(rid)
    error = done["payload"].get("error") or {}
    return f"DONE {done['payload']['status']} {error.get('code', '')}".strip()


async def _frame_flood(
    server: Server, tally: Tally, attack: str, first: bytes, each: bytes
) -> None:
    """Send ``first`` and then ``each`` up to ``FRAME_FLOOD`` times (in writes of 2,000
    frames), as fast as TCP goes, until the server closes or ``FRAME_FLOOD_S`` passes."""
    stream = await connect(server.port)
    try:
        auth = [("Authorization", f"Bearer {server.token}")]
        hello = await exchange(
            stream, handshake_request("/ws", "127.0.0.1", auth), expect=1, wait_s=5
        )
        if hello.statuses[:1] != [101]:
            tally.answer(attack, f"handshake {hello.statuses or 'none'}")
            return
        frames = ServerFrames()
        frames.feed(hello.rest)
        sent = 0
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(frames.read, stream)
            with trio.move_on_after(FRAME_FLOOD_S):
                try:
                    await stream.send_all(first)
                    batch = each * 2000
                    while sent < FRAME_FLOOD and frames.close_code is None:
                        await stream.send_all(batch)
                        sent += 2000
                except (trio.BrokenResourceError, OSError):
                    pass
                with trio.move_on_after(1.0):  # the close frame, if it is on its way
                    await frames.ended.wait()
            nursery.cancel_scope.cancel()
        tally.counts[f"{attack}: frames sent"] += sent
        # What the server acted on: a pong per ping it read.
        pongs = frames.counts.get(0xA, 0)
        allowance = FRAME_BUDGET_BURST + FRAME_BUDGET_RATE_PER_S * (trio.current_time() - started)
        if frames.close_code is not None:
            tally.answer(attack, f"closed {frames.close_code}")
        elif each[0] & 0x0F == PING and pongs <= allowance:
            tally.answer(attack, "not closed, but answered within the frame budget")
        else:
            tally.answer(attack, "not closed")
            tally.breach(attack, f"{sent} frames and the connection was not closed")
        if frames.counts.get(0xA):
            tally.counts[f"{attack}: pongs"] += frames.counts[0xA]
    finally:
        reset(stream)
        await trio.aclose_forcefully(stream)


async def fragments(server: Server, tally: Tally, rng: random.Random) -> None:
    async with alone(server, "fragments", 0.5) as mine:
        if mine:
            first = client_frame(TEXT, b'{"msg_type": ', fin=False)
            await _frame_flood(
                server, tally, "fragments", first, client_frame(CONTINUATION, fin=False)
            )


async def pings(server: Server, tally: Tally, rng: random.Random) -> None:
    async with alone(server, "pings", 0.5) as mine:
        if mine:
            await _frame_flood(server, tally, "pings", b"", client_frame(PING))
