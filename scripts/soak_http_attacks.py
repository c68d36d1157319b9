"""The soak's attacks on the HTTP side: handshakes and plain requests, by hand.

Like ``soak_attacks.py``, each attack is a behaviour that counts what the server
answered (``tally.answer``: HTTP statuses, closes) and every bound it saw broken
(``tally.breach``); all bounded in count and time, on loopback.

* rebinds: a DNS-rebinding page's handshake (``Host: rebind.evil.example`` with a
  matching ``Origin``, no token) and plain requests with that Host, against the
  second server, which has no token: each must get 403.
* metrics_pipelines: 100 ``GET /metrics`` pipelined on one connection (two at once):
  the server must bound them.
* smuggles: ``Content-Length`` and ``Transfer-Encoding`` on one request, then a
  second request: 400 and the connection closed (RFC 9112), never two answers.
* token_names: the right token under names the server does not take (``?TOKEN=``,
  ``?access-token=``, ``?api_key=``...): 401, and the token in no log line (the
  report's "secrets in server logs").
* bad_handshakes: ``Sec-WebSocket-Key: abc`` (not 16 bytes of base64), or two keys:
  400 (RFC 6455 4.2.1).
* address_hoards: one address opens up to ``HOARD`` sessions and holds them; past
  ``PER_ADDRESS_LIMIT`` it must get 503, and another address must still get in.
"""

from __future__ import annotations

import random

import trio
from soak_attacks import alone
from soak_client import Server, Tally
from soak_raw import (
    HttpAnswers,
    connect,
    exchange,
    handshake_request,
    http_request,
    one_exchange,
    reset,
)

#: Sessions one address may hold (the server is started with it); the soak's
#: ``--max-sessions`` is ``HOARD``, so that a hoarder unbounded takes them all.
PER_ADDRESS_LIMIT = 100
HOARD = 300
#: Pipelined requests per connection, and how many answers on one connection break the bound.
PIPELINE = 100
PIPELINE_BOUND = 50
REBIND_HOST = "rebind.evil.example"


def statuses(answers: HttpAnswers) -> str:
    shown = ", ".join(str(s) for s in answers.statuses) or "no answer"
    return shown + (" (closed)" if answers.closed else "")


def count_statuses(tally: Tally, attack: str, seen: list[int]) -> None:
    for status in seen:
        tally.answer(attack, f"HTTP {status}")


async def rebinds(server: Server, tally: Tally, rng: random.Random) -> None:
    if server.open_port is None:
        return
    port = server.open_port
    host = f"{REBIND_HOST}:{port}"
    origin = ("Origin", f"http://{host}")
    tries = [
        ("handshake", handshake_request("/ws", host, [origin])),
        ("GET /", http_request("GET", "/", host, [origin])),
        ("GET /metrics", http_request("GET", "/metrics", host)),
    ]
    what, data = rng.choice(tries)
    answers = await one_exchange(port, data, expect=1, wait_s=5)
    status = answers.statuses[0] if answers.statuses else None
    tally.answer("rebinds", f"{what}: {status}")
    if status != 403:
        tally.breach("rebinds", f"{what} with Host {REBIND_HOST} got {status}")
    if rng.random() < 0.2:  # the control: localhost is still let in
        local = await one_exchange(port, handshake_request("/ws", f"localhost:{port}"), wait_s=5)
        tally.answer("rebinds", f"control Host localhost: {statuses(local)}")


async def metrics_pipelines(server: Server, tally: Tally, rng: random.Random) -> None:
    request = http_request("GET", "/metrics", "127.0.0.1")

    async def pipeline() -> None:
        answers = await one_exchange(server.port, request * PIPELINE, expect=PIPELINE, wait_s=5)
        count_statuses(tally, "metrics_pipelines", answers.statuses)
        if answers.closed:
            tally.answer("metrics_pipelines", "connection closed by the server")
        served = answers.statuses.count(200)
        most = "metrics_pipelines: most answers on one connection"
        tally.counts[most] = max(served, tally.counts[most])
        if served > PIPELINE_BOUND:
            tally.breach("metrics_pipelines", f"over {PIPELINE_BOUND} answers on one connection")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipeline)
        nursery.start_soon(pipeline)


async def smuggles(server: Server, tally: Tally, rng: random.Random) -> None:
    framing = [("Content-Length", "5"), ("Transfer-Encoding", "chunked")]
    if rng.random() < 0.5:
        framing.reverse()
    first = http_request("GET", "/healthz", "127.0.0.1", framing, b"0\r\n\r\n")
    second = http_request("GET", "/metrics", "127.0.0.1")
    answers = await one_exchange(server.port, first + second, expect=2, wait_s=3)
    tally.answer("smuggles", statuses(answers))
    if answers.statuses[:1] != [400] or len(answers.statuses) > 1:
        tally.breach("smuggles", f"answered {statuses(answers)}")


async def token_names(server: Server, tally: Tally, rng: random.Random) -> None:
    name = rng.choice(["TOKEN", "Token", "access-token", "api_key", "access_token"])
    target = f"/ws?{name}={server.token}&soak=1"
    answers = await one_exchange(server.port, handshake_request(target, "127.0.0.1"), wait_s=5)
    tally.answer("token_names", f"?{name}=: {statuses(answers)}")


async def bad_handshakes(server: Server, tally: Tally, rng: random.Random) -> None:
    auth = [("Authorization", f"Bearer {server.token}")]
    tries = {
        "Sec-WebSocket-Key: abc": ["abc"],
        "two Sec-WebSocket-Keys": None,
        "Sec-WebSocket-Key of 15 bytes": ["AAAAAAAAAAAAAAAAAAAA"],
    }
    what = rng.choice(list(tries))
    keys = tries[what]
    if keys is None:
        request = handshake_request("/ws", "127.0.0.1", auth)
        key = request.split(b"Sec-WebSocket-Key: ", 1)[1].split(b"\r\n", 1)[0].decode()
        keys = [key, key]
    answers = await one_exchange(
        server.port, handshake_request("/ws", "127.0.0.1", auth, keys), wait_s=5
    )
    status = answers.statuses[0] if answers.statuses else None
    tally.answer("bad_handshakes", f"{what}: {status}")
    if status == 101:  # (a 503 while a hoarder holds every session is no breach)
        tally.breach("bad_handshakes", f"{what} got {status}")


async def address_hoards(server: Server, tally: Tally, rng: random.Random) -> None:
    """One address (127.0.0.100-199) opens ``HOARD`` sessions, 50 handshakes at a time,
    and holds them; meanwhile a session from 127.0.0.1 must still be let in."""
    async with alone(server, "address_hoards", 3.0) as mine:
        if not mine:
            return
        source = f"127.0.0.{rng.randrange(100, 200)}"
        auth = [("Authorization", f"Bearer {server.token}")]
        held: list[trio.SocketStream] = []
        answered: dict[int | None, int] = {}
        gate = trio.Semaphore(50)

        async def open_one() -> None:
            async with gate:
                stream = await connect(server.port, source=source)
                held.append(stream)
                answers = await exchange(
                    stream, handshake_request("/ws", "127.0.0.1", auth), expect=1, wait_s=10
                )
            status = answers.statuses[0] if answers.statuses else None
            answered[status] = answered.get(status, 0) + 1

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(HOARD):
                    nursery.start_soon(open_one)
            accepted = answered.get(101, 0)
            for status, n in answered.items():
                tally.counts[f"attack address_hoards: one address: {status}"] += n
            tally.counts["address_hoards: most sessions held by one address"] = max(
                accepted, tally.counts["address_hoards: most sessions held by one address"]
            )
            if accepted > PER_ADDRESS_LIMIT:
                tally.breach("address_hoards", f"one address held over {PER_ADDRESS_LIMIT}")
            other = await one_exchange(
                server.port, handshake_request("/ws", "127.0.0.1", auth), wait_s=5
            )
            tally.answer("address_hoards", f"meanwhile another address: {statuses(other)}")
            if other.statuses[:1] != [101]:
                tally.breach("address_hoards", "another address was refused")
            await trio.sleep(1.0)
        finally:
            for stream in held:
                reset(stream)
                await trio.aclose_forcefully(stream)
