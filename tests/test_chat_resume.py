"""``trio-agent chat`` across a dropped connection: a discreet line says it is
reconnecting, then that the session is back, and the reply goes on."""

from __future__ import annotations

import trio
from fake_server import FAKE_URL, start_fake
from test_chat import Keyboard, Transcript

from trio_agent.cli.chat import run_chat


async def test_the_chat_says_reconnecting_then_resumed_and_the_reply_goes_on(
    nursery, autojump_clock
):
    fake = start_fake(nursery, resume=True)
    keyboard, out = Keyboard(), Transcript()

    async def server_side() -> None:
        await fake.connected.wait()
        request = await fake.recv_type("REQUEST")
        rid = request["request_id"]
        await fake.stream(rid, 0, "Hello")
        await out.wait_for(lambda text: "Hello" in text)
        await fake.drop()
        await out.wait_for(lambda text: "[reconnecting...]" in text)
        await fake.accept_resume()
        await fake.stream(rid, 1, " world")
        await fake.done(rid, 2)

    async with trio.open_nursery() as inner:
        inner.start_soon(server_side)
        keyboard.type("hi\n")
        status_box: list[int] = []

        async def chat() -> None:
            status_box.append(
                await run_chat(
                    FAKE_URL,
                    stdin=keyboard.stdin,
                    out=out,
                    heartbeat_s=None,
                    stream=fake.client_stream,
                    open_stream=fake.open_stream,
                )
            )

        inner.start_soon(chat)
        await out.wait_for(lambda text: " world" in text)
        keyboard.close()
    assert status_box == [0]
    text = out.getvalue()
    assert text.index("Hello") < text.index("[reconnecting...]") < text.index("[resumed]")
    assert text.index("[resumed]") < text.index(" world")
    assert text.count("Hello") == 1
