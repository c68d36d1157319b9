"""The demo page resumes a reply against the real server after its connection is killed.

tests/test_web_resume_browser.py proves the page's side against a scripted fake; here the
page, agent-client.js and the server meet for real. The page is loaded through a TCP
relay in the test process, so its WebSocket goes through the relay too; mid-reply the
relay resets both halves of that connection (SO_LINGER 0: an RST, no close frame), the
page sees an abnormal close (1006), resumes against the server, and the reply must
complete with every word exactly once, in order, with one DONE. Every wait is on page
state, never on the clock.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from served import ServedProcess
from test_web_browser import Demo, expect, lorem_text, server  # noqa: F401
from test_web_resume_browser import DESKTOP, in_chromium

from trio_agent.agents import lorem_words

pytestmark = pytest.mark.browser

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("the browser tests run on Linux", allow_module_level=True)

#: A reply long enough to be cut well inside it, short enough to finish in seconds.
WORDS = 400
SPEED = 120  # words per second
#: What the server writes that the page never gets, at least: a dozen STREAM frames.
LOST_BYTES = 2048


# ---------------------------------------------------------------- the relay


@dataclass
class _Relayed:
    """One connection through the relay: the browser's half and the server's half."""

    client: trio.SocketStream
    upstream: trio.SocketStream
    websocket: bool = False
    #: Set by :meth:`Relay.kill_websockets`: what the server sends is read and lost.
    losing: bool = False
    lose_bytes: int = 0
    lost_bytes: int = 0
    lost_enough: trio.Event = field(default_factory=trio.Event)
    reset: bool = False


@dataclass
class Relay:
    """A TCP relay to the server, in a thread of its own, that can kill its WebSockets.

    :meth:`kill_websockets` does to every WebSocket connection what a network that fails
    does: the server's next bytes are lost on the way (read and dropped, so the server
    has written them and the page never sees them), then both halves are closed with
    SO_LINGER 0, so each peer gets an RST and no close frame. Plain HTTP connections (the
    page, its scripts) are left alone.
    """

    target_port: int
    port: int = 0
    connections: list[_Relayed] = field(default_factory=list)
    _token: Any = None
    _cancel: trio.CancelScope | None = None
    #: While set and not yet released, a new connection waits before reaching the server.
    _admit: trio.Event | None = None

    def start(self) -> Relay:
        started = threading.Event()

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._cancel:
                (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
                self.port = listener.socket.getsockname()[1]
                started.set()
                await trio.serve_listeners(self._relay, [listener])

        self._thread = threading.Thread(target=trio.run, args=(main,), name="relay", daemon=True)
        self._thread.start()
        assert started.wait(10), "the relay did not start"
        return self

    def stop(self) -> None:
        trio.from_thread.run_sync(self._cancel_all, trio_token=self._token)
        self._thread.join(10)

    def _cancel_all(self) -> None:
        assert self._cancel is not None
        self._cancel.cancel()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def hold(self) -> None:
        """Keep the next connections waiting (the network is still down) until
        :meth:`release`."""
        trio.from_thread.run_sync(self._hold, trio_token=self._token)

    def _hold(self) -> None:
        self._admit = trio.Event()

    def release(self) -> None:
        trio.from_thread.run_sync(self._release, trio_token=self._token)

    def _release(self) -> None:
        if self._admit is not None:
            self._admit.set()

    def kill_websockets(self, *, lose_bytes: int) -> list[int]:
        """Lose at least ``lose_bytes`` of what the server sends on each live WebSocket
        connection, then reset it. Returns the bytes lost, one figure per connection."""
        return list(trio.from_thread.run(self._kill, lose_bytes, trio_token=self._token))

    async def _kill(self, lose_bytes: int) -> list[int]:
        live = [c for c in self.connections if c.websocket and not c.reset]
        for relayed in live:
            relayed.lose_bytes = lose_bytes
            relayed.losing = True
        with trio.fail_after(10):
            for relayed in live:
                await relayed.lost_enough.wait()
        for relayed in live:
            relayed.reset = True
            for stream in (relayed.client, relayed.upstream):
                linger = struct.pack("ii", 1, 0)
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                await stream.aclose()
        return [relayed.lost_bytes for relayed in live]

    async def _relay(self, client: trio.SocketStream) -> None:
        if self._admit is not None:
            await self._admit.wait()
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        relayed = _Relayed(client, upstream)
        self.connections.append(relayed)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._to_server, relayed)
            nursery.start_soon(self._to_browser, relayed)

    @staticmethod
    async def _to_server(relayed: _Relayed) -> None:
        try:
            while data := await relayed.client.receive_some(65536):
                if b"upgrade: websocket" in data.lower():
                    relayed.websocket = True
                await relayed.upstream.send_all(data)
            await relayed.upstream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    @staticmethod
    async def _to_browser(relayed: _Relayed) -> None:
        try:
            while data := await relayed.upstream.receive_some(65536):
                if relayed.losing:
                    relayed.lost_bytes += len(data)
                    if relayed.lost_bytes >= relayed.lose_bytes:
                        relayed.lost_enough.set()
                    continue
                await relayed.client.send_all(data)
            await relayed.client.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


@pytest.fixture
def relay(server: ServedProcess) -> Iterator[Relay]:  # noqa: F811
    relay = Relay(server.port).start()
    yield relay
    relay.stop()


# ---------------------------------------------------------------- the page


def record_connections(page: Any) -> None:
    """Keep, for every WebSocket the page opens, its JSON frames received and its close
    code, in ``window.connections``: recorded by the page itself, so a frame the client
    has handled is always there."""
    page.add_init_script(
        """
        window.connections = [];
        const Native = window.WebSocket;
        window.WebSocket = class extends Native {
          constructor(...args) {
            super(...args);
            const connection = { frames: [], closeCode: null };
            window.connections.push(connection);
            this.addEventListener("message", (event) => {
              if (typeof event.data === "string") connection.frames.push(JSON.parse(event.data));
            });
            this.addEventListener("close", (event) => { connection.closeCode = event.code; });
          }
        };
        """
    )


def connections(demo: Demo) -> list[dict[str, Any]]:
    return list(demo.page.evaluate("() => window.connections"))


def open_through(demo: Demo, relay: Relay) -> None:
    record_connections(demo.page)
    demo.page.goto(relay.url)
    expect(demo.by("status")).to_have_text("open")


def of_request(frames: list[dict[str, Any]], request_id: str, *types: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("request_id") == request_id and f["msg_type"] in types]


def kill_mid_reply(demo: Demo, relay: Relay, *, speed: float, hold: bool = False) -> None:
    """Ask for a long reply and kill its connection once some words are shown; with
    ``hold``, the page's next connections wait until ``relay.release()``."""
    open_through(demo, relay)
    demo.ask("Tell me a long story", words=WORDS, speed=speed)
    demo.wait_words(0, 20)
    if hold:
        relay.hold()
    # Some frames the server wrote are lost with the connection: the resume must
    # replay them from the server's buffer.
    (lost,) = relay.kill_websockets(lose_bytes=LOST_BYTES)
    assert lost >= LOST_BYTES


def request_of_the_reply(demo: Demo) -> str:
    first = connections(demo)[0]["frames"]
    (request,) = {f["request_id"] for f in first if f["msg_type"] == "STREAM"}
    return request


def killed_mid_reply(demo: Demo, relay: Relay, *, speed: float = SPEED) -> str:
    """Ask for a long reply, kill its connection once some words are shown, and wait
    until the page has resumed. Returns the reply's request id."""
    kill_mid_reply(demo, relay, speed=speed)
    expect(demo.by("resume")).to_have_text(re.compile("reconnecting|resumed"))
    expect(demo.by("resume")).to_have_text("resumed")
    return request_of_the_reply(demo)


# ---------------------------------------------------------------- scenarios


def test_a_reply_whose_connection_is_killed_resumes_with_every_word_once(
    server,  # noqa: F811
    relay,
    tmp_path,
):
    in_chromium(tmp_path, lambda demo: every_word_once(demo, relay), **DESKTOP)


def every_word_once(demo: Demo, relay: Relay) -> None:
    request = killed_mid_reply(demo, relay)
    demo.shot("resumed-live")
    expect(demo.reply(0)).to_have_attribute("data-status", "completed", timeout=20_000)
    expect(demo.text_of(0)).to_have_text(lorem_text(WORDS))
    expect(demo.meta_of(0)).to_have_text(f"completed · {WORDS} frames")
    killed, resumed_on = connections(demo)  # one connection killed, one resumed
    assert killed["closeCode"] == 1006, "the page saw an abnormal close"
    assert resumed_on["closeCode"] is None
    first, second = killed["frames"], resumed_on["frames"]
    before = of_request(first, request, "STREAM")
    assert before, "the connection was killed before any word came"
    assert not of_request(first, request, "DONE"), "the reply ended before the kill"
    assert [f["msg_type"] for f in second[:2]] == ["SESSION", "RESUMED"]
    resumed = second[1]
    assert resumed["session_id"] == first[0]["session_id"]
    assert resumed["payload"]["requests"] == {request: "running"}
    after = of_request(second, request, "STREAM")
    streams = before + after
    # Every word exactly once, in order: the replay starts right after the last seq
    # the page held, and nothing is sent twice.
    assert [f["payload"]["seq"] for f in streams] == list(range(WORDS))
    assert [f["payload"]["delta"] for f in streams] == lorem_words(WORDS)
    (done,) = of_request(first + second, request, "DONE")
    assert done["payload"]["status"] == "completed"
    assert done["payload"]["frames"] == WORDS
    stats = demo.stats()
    assert (stats["resumes"], stats["duplicatesDropped"], stats["violations"]) == (1, 0, 0)
    assert demo.page.evaluate("() => window.agentClient.sessionId") == first[0]["session_id"]
    demo.shot("completed-after-resume")


def test_stop_right_after_the_resume_cuts_the_reply(server, relay, tmp_path):  # noqa: F811
    in_chromium(tmp_path, lambda demo: stop_after_resume(demo, relay), **DESKTOP)


def stop_after_resume(demo: Demo, relay: Relay) -> None:
    request = killed_mid_reply(demo, relay, speed=SPEED / 3)  # still streaming at the click
    # The click event itself, not a click at the button's coordinates: each word that
    # wraps pushes the button down, and a pointer click could land where it just was.
    demo.by("stop").dispatch_event("click")
    expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
    expect(demo.meta_of(0)).to_have_text(re.compile(r"^cut after \d+ frames · ACK in \d+\.\d ms$"))
    cut_after_the_ack(demo, request)
    demo.shot("stopped-after-resume")


def test_stop_while_reconnecting_goes_out_on_resume_and_cuts_the_reply(
    server,  # noqa: F811
    relay,
    tmp_path,
):
    in_chromium(tmp_path, lambda demo: stop_while_reconnecting(demo, relay), **DESKTOP)


def stop_while_reconnecting(demo: Demo, relay: Relay) -> None:
    try:
        kill_mid_reply(demo, relay, speed=SPEED / 3, hold=True)
        request = request_of_the_reply(demo)
        expect(demo.by("resume")).to_have_text("reconnecting…")
        demo.by("stop").click()  # the INTERRUPT waits for RESUMED; the reply is cut at once
        expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
        demo.shot("stopped-while-reconnecting")
    finally:
        relay.release()
    expect(demo.by("resume")).to_have_text("resumed")
    expect(demo.meta_of(0)).to_have_text(re.compile(r"^cut after \d+ frames · ACK in \d+\.\d ms$"))
    cut_after_the_ack(demo, request)
    demo.shot("stopped-before-resume")


def cut_after_the_ack(demo: Demo, request: str) -> None:
    """The reply stays cut where the page cut it; its ACK came on the resumed
    connection, then its DONE, and no STREAM of it after the ACK."""
    cut = str(demo.text_of(0).text_content())
    words = len(cut.split())
    assert 20 <= words < WORDS
    assert cut == lorem_text(words)  # cut on the last delivered word
    expect(demo.by("stale")).to_have_text("0")
    # The server's DONE follows its ACK: wait for it before reading the frames.
    demo.page.wait_for_function(
        "(id) => window.connections[1].frames.some("
        "(f) => f.msg_type === 'DONE' && f.request_id === id)",
        arg=request,
    )
    killed, resumed_on = connections(demo)
    first, second = killed["frames"], resumed_on["frames"]
    (ack,) = [f for f in second if f["msg_type"] == "INTERRUPT_ACK"]
    assert request in ack["payload"]["interrupted"]
    (done,) = of_request(first + second, request, "DONE")
    assert done["payload"]["status"] == "interrupted"
    # After the ACK, nothing more of the reply streams.
    after_ack = second[second.index(ack) + 1 :]
    assert not of_request(after_ack, request, "STREAM")
    expect(demo.text_of(0)).to_have_text(cut)
    stats = demo.stats()
    assert (stats["resumes"], stats["staleAfterAck"], stats["violations"]) == (1, 0, 0)
