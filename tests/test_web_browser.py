"""The demo page and agent-client.js in a real Chromium, against a real `scripts/serve`.

Every wait is on page state (Playwright's ``expect``), never on the clock; a
screenshot of each key state is saved in the test's tmp dir. The page runs under its
own Content-Security-Policy, so a page error or a policy violation fails the test.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM
from served import ROOT, ServedProcess

from trio_agent.agents import lorem_words
from trio_agent.agents.builtin import LOREM_WORDS, LOREM_WORDS_PER_S

pytestmark = pytest.mark.browser

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("the browser tests run on Linux", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]

#: How long a reconnect may take: the server restarts (a Python process) while the
#: client backs off (250 ms, doubling).
RECONNECT_TIMEOUT_MS = 20_000


def lorem_text(words: int) -> str:
    return "".join(lorem_words(words))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    """One `scripts/serve` for the tests that leave it running."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    served = ServedProcess([str(ROOT / "scripts" / "serve")], log).start()
    yield served
    assert served.stop() == 0


class Demo:
    """The demo page, driven through its data-testid attributes."""

    def __init__(self, page: Any, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error"
                else None
            ),
        )

    def open(self, served: ServedProcess, query: str = "") -> Demo:
        self.page.goto(served.http_url + query)
        expect(self.by("status")).to_have_text("open")
        return self

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def reply(self, n: int) -> Any:
        return self.by("reply").nth(n)

    def text_of(self, n: int) -> Any:
        return self.reply(n).get_by_test_id("reply-text")

    def meta_of(self, n: int) -> Any:
        return self.reply(n).get_by_test_id("reply-meta")

    def ask(self, prompt: str, *, words: int = 60, speed: float = 12, agent: str = "lorem") -> None:
        self.by("agent").select_option(agent)
        self.by("words").fill(str(words))
        self.by("speed").fill(str(speed))
        self.by("prompt").fill(prompt)
        self.by("prompt").press("Enter")

    def wait_words(self, n: int, at_least: int) -> str:
        expect(self.text_of(n)).to_have_text(re.compile(rf"^(\S+\s+){{{at_least - 1}}}\S+"))
        return str(self.text_of(n).text_content())

    def stats(self) -> dict[str, Any]:
        return dict(self.page.evaluate("() => ({...window.agentClient.stats})"))

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=path, full_page=full_page)
        return path


@pytest.fixture
def demo(browser: Any, tmp_path: Path) -> Iterator[Demo]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    demo = Demo(context.new_page(), tmp_path)
    yield demo
    context.close()
    assert not demo.errors, demo.errors


# ---------------------------------------------------------------- scenarios


def test_the_page_loads_connects_and_lists_the_agents(demo, server):
    demo.open(server)
    agents = demo.by("agent").locator("option")
    # scripts/serve lists the openai agent too, unavailable without an upstream.
    expect(agents).to_have_text(["lorem", "echo", "openai (unavailable)"])
    expect(agents.nth(2)).to_be_disabled()
    expect(demo.by("agent")).to_have_value("lorem")
    expect(demo.by("session")).to_have_text(re.compile(r"^[0-9a-f]{16}$"))
    expect(demo.by("rtt")).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
    expect(demo.by("dropped")).to_have_text("0")
    expect(demo.by("stale")).to_have_text("0")
    demo.shot("connected")


def test_a_reply_streams_and_completes(demo, server):
    demo.open(server)
    demo.ask("Tell me something", words=16, speed=25)
    expect(demo.reply(0)).to_have_attribute("data-status", "streaming")
    demo.wait_words(0, 3)
    demo.shot("streaming")
    expect(demo.reply(0)).to_have_attribute("data-status", "completed")
    expect(demo.text_of(0)).to_have_text(lorem_text(16))
    expect(demo.meta_of(0)).to_have_text("completed · 16 frames")
    expect(demo.by("stop")).to_be_disabled()
    demo.shot("completed")


def test_stop_cuts_the_reply_at_once_and_the_page_shows_the_ack(demo, server):
    demo.open(server)
    demo.ask("A long one please", words=100_000, speed=20)
    demo.wait_words(0, 4)
    demo.by("stop").click()
    expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
    expect(demo.meta_of(0)).to_have_text(re.compile(r"^cut after \d+ frames · ACK in \d+\.\d ms$"))
    cut = str(demo.text_of(0).text_content())
    words = len(cut.split())
    assert cut == lorem_text(words)  # cut on the last delivered word
    expect(demo.meta_of(0)).to_contain_text(f"cut after {words} frames")
    expect(demo.by("ack-ms")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(demo.by("stale")).to_have_text("0")
    assert demo.stats()["staleAfterAck"] == 0
    # The server's DONE has come by now (it follows the ACK); nothing was added.
    expect(demo.text_of(0)).to_have_text(cut)
    demo.shot("stopped")


@pytest.mark.parametrize(
    ("first_speed", "second_speed", "name"),
    [
        (0, 0, "fast"),  # a stream as fast as backpressure allows, cut by another one
        (25, 25, "reading-speed"),  # what a person sees
    ],
)
def test_barge_in_leaves_the_old_reply_cut_and_the_new_one_complete(
    demo, server, first_speed, second_speed, name
):
    demo.open(server)
    demo.ask("First question", words=200_000, speed=first_speed)
    demo.wait_words(0, 12)
    demo.ask("Second question, sooner", words=20, speed=second_speed)
    # The old reply is cut at once, before any ACK could come back...
    expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
    if second_speed:
        demo.wait_words(1, 5)
        expect(demo.meta_of(0)).to_contain_text("ACK in")
        demo.shot(f"barge-in-{name}")
    expect(demo.meta_of(0)).to_contain_text("ACK in")
    old = str(demo.text_of(0).text_content())
    assert old == lorem_text(len(old.split()))
    # ...and the new one runs to its end, untouched.
    expect(demo.reply(1)).to_have_attribute("data-status", "completed")
    expect(demo.text_of(1)).to_have_text(lorem_text(20))
    expect(demo.text_of(0)).to_have_text(old)
    expect(demo.by("stale")).to_have_text("0")
    stats = demo.stats()
    assert stats["staleAfterAck"] == 0
    assert stats["violations"] == 0
    expect(demo.by("dropped")).to_have_text(str(stats["droppedAfterInterrupt"]))
    demo.shot(f"barge-in-{name}-done", full_page=False)


def test_a_held_back_ack_still_clears_the_page_at_once_then_times_out(demo, tmp_path):
    held = ServedProcess(
        [sys.executable, str(ROOT / "tests" / "ack_holding_server.py"), "2"],
        tmp_path / "server.log",
    ).start()
    try:
        demo.open(held, "?ack_timeout_ms=800")
        demo.ask("Talk to me", words=100_000, speed=20)
        demo.wait_words(0, 3)
        # Click Stop and read the reply in the same turn of the page's event loop: no
        # frame from the server can be handled in between, so the cut is local.
        status = demo.page.evaluate(
            """async () => {
                document.querySelector('[data-testid="stop"]').click();
                await null;  // the reply's done handler, queued by the click, runs first
                return document.querySelector('[data-testid="reply"]').dataset.status;
            }"""
        )
        assert status == "interrupted"
        cut = str(demo.text_of(0).text_content())
        assert demo.stats()["acks"] == 0
        expect(demo.by("ack-ms")).to_have_text("")
        demo.shot("cut-before-the-ack")
        expect(demo.meta_of(0)).to_have_text(
            re.compile(r"cut after \d+ frames · no ACK within 800 ms$")
        )
        expect(demo.by("ack-timeouts")).to_have_text("1")
        demo.shot("ack-timeout")
        # The ACK comes late: counted, shown, and nothing of the cut reply leaks in.
        expect(demo.meta_of(0)).to_contain_text("it came late", timeout=10_000)
        expect(demo.by("ack-ms")).to_have_text(re.compile(r"^\d+\.\d$"))
        stats = demo.stats()
        assert stats["lateAcks"] == 1
        assert stats["staleAfterAck"] == 0
        expect(demo.text_of(0)).to_have_text(cut)
        # The session still works.
        demo.ask("And now?", words=5, speed=0)
        expect(demo.reply(1)).to_have_attribute("data-status", "completed")
        demo.shot("late-ack")
    finally:
        held.stop()


def test_the_page_reconnects_after_the_server_restarts(browser, tmp_path):
    served = ServedProcess([str(ROOT / "scripts" / "serve")], tmp_path / "server.log").start()
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    demo = Demo(context.new_page(), tmp_path)
    try:
        demo.open(served, "?reconnect_max_ms=1000")
        first_session = demo.by("session").text_content()
        demo.ask("Keep talking", words=100_000, speed=20)
        demo.wait_words(0, 2)
        # SIGTERM: a graceful shutdown, not held up by the open page (its WebSocket,
        # and its idle keep-alive HTTP connection).
        assert served.stop(timeout=4) == 0
        expect(demo.reply(0)).to_have_attribute("data-status", "shutdown")
        expect(demo.by("status")).to_have_text("reconnecting")
        demo.shot("server-gone")
        served.start()
        expect(demo.by("status")).to_have_text("open", timeout=RECONNECT_TIMEOUT_MS)
        expect(demo.by("session")).not_to_have_text(first_session)
        expect(demo.page.locator(".msg.system").last).to_contain_text("Reconnected")
        demo.ask("Hello again", words=6, speed=0)
        expect(demo.reply(1)).to_have_attribute("data-status", "completed")
        expect(demo.text_of(1)).to_have_text(lorem_text(6))
        assert demo.stats()["reconnects"] == 1
        demo.shot("reconnected")
    finally:
        context.close()
        served.stop()
    # The browser logs the refused reconnect attempts; nothing else may fail.
    assert not [e for e in demo.errors if "WebSocket connection" not in e], demo.errors


def test_the_agent_selector_picks_the_agent(demo, server):
    demo.open(server, "?agent=echo")
    expect(demo.by("agent")).to_have_value("echo")
    demo.ask("echo these four words", agent="echo", speed=0)
    expect(demo.reply(0)).to_have_attribute("data-status", "completed")
    expect(demo.text_of(0)).to_have_text("echo these four words")
    expect(demo.reply(0).locator(".who")).to_have_text("echo")


def test_every_control_has_a_label_and_works_from_the_keyboard(demo, server):
    demo.open(server)
    for testid, name in [
        ("prompt", re.compile("^Message")),
        ("send", "Send"),
        ("stop", "Stop"),
        ("agent", "Agent"),
        ("words", "Words (lorem)"),
        ("speed", "Words per second"),
        ("status", "Connection"),
    ]:
        expect(demo.by(testid)).to_have_accessible_name(name)
    keyboard = demo.page.keyboard
    keyboard.press("Tab")
    expect(demo.by("prompt")).to_be_focused()
    keyboard.type("Typed, not clicked")
    keyboard.press("Enter")  # Enter sends
    expect(demo.reply(0)).to_have_attribute("data-status", "streaming")
    keyboard.press("Escape")  # Esc stops
    expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
    expect(demo.by("prompt")).to_be_focused()
    keyboard.type("Once more")
    keyboard.press("Tab")
    expect(demo.by("send")).to_be_focused()
    keyboard.press("Enter")
    expect(demo.reply(1)).to_have_attribute("data-status", "streaming")
    keyboard.press("Tab")
    expect(demo.by("stop")).to_be_focused()
    keyboard.press("Enter")
    expect(demo.reply(1)).to_have_attribute("data-status", "interrupted")
    expect(demo.by("prompt")).to_be_focused()  # Stop hands the focus back
    keyboard.press("Tab")
    keyboard.press("Tab")  # past Send; Stop is disabled again
    expect(demo.by("agent")).to_be_focused()
    keyboard.press("ArrowDown")
    expect(demo.by("agent")).to_have_value("echo")
    demo.shot("keyboard")


def test_the_page_fits_a_320_px_screen(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 320, "height": 640}, is_mobile=True)
    demo = Demo(context.new_page(), tmp_path)
    try:
        demo.open(server)
        demo.ask("Small screen", words=100_000, speed=20)
        demo.wait_words(0, 10)
        demo.ask("Cut in", words=20, speed=20)
        expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
        width = demo.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 320
        for testid in ["prompt", "send", "stop", "agent", "status", "rtt", "stale"]:
            box = demo.by(testid).bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= 320, testid
        demo.shot("320px")
    finally:
        context.close()
    assert not demo.errors, demo.errors


def test_interrupt_stops_scheduled_audio_at_once(demo, server):
    demo.open(server)
    demo.ask("Speak", words=100_000, speed=10)
    demo.wait_words(0, 1)
    result = demo.page.evaluate(
        """async () => {
            const client = window.agentClient;
            const [response] = client.streaming;
            const audio = client.audio;
            await audio.context.resume();
            const second = new Float32Array(24000).map((_, i) => Math.sin(i / 10) * 0.1);
            for (let i = 0; i < 3; i++) audio.enqueue(second, { requestId: response.requestId });
            const scheduled = audio.pending;
            const sources = audio._entries.map((e) => e.source);
            const ended = Promise.all(
                sources.map((s) => new Promise((done) => s.addEventListener("ended", done))));
            const ack = client.interrupt(response.requestId);
            const pendingAfter = audio.pending;
            // Stopped sources end now, not after the 3 s they were scheduled for.
            const endedInTime = await Promise.race([
                ended.then(() => true),
                new Promise((done) => setTimeout(() => done(false), 1500)),
            ]);
            await ack;
            return { state: audio.context.state, scheduled, pendingAfter, endedInTime,
                     played: audio.playedMs(response.requestId) };
        }"""
    )
    assert result["state"] == "running"
    assert result["scheduled"] == 3
    assert result["pendingAfter"] == 0
    assert result["endedInTime"] is True
    assert result["played"] < 1500
    expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")


def test_the_client_module_imports_into_a_page_of_another_origin(browser, server):
    """Module scripts are fetched with CORS: the server allows any origin to import it."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_content("<!doctype html><title>elsewhere</title>")
        exported = page.evaluate(
            """async (url) => {
                const module = await import(url);
                const client = new module.AgentClient("ws://127.0.0.1:1/ws");
                return [Object.keys(module).sort(), client.state, client.stats.staleAfterAck];
            }""",
            server.http_url + "static/agent-client.js",
        )
    finally:
        context.close()
    names, state, stale = exported
    assert {"AgentClient", "AckTimeoutError", "NotConnectedError", "AudioPlayback"} <= set(names)
    assert (state, stale) == ("idle", 0)


# ---------------------------------------------------------------- speech (protocol v1.1)
#
# The analyser of the page's AudioPlayback listens to what is really rendered: each
# test checks it hears sound before the barge-in, so the "played after interrupt: 0"
# that follows means silence, not a deaf measurement.

#: Builds AUDIO binary frames in the page, as the server sends them.
FRAMES_JS = """() => {
window.audioFrame = (requestId, seq, ms, rate) => {
    const head = new TextEncoder().encode(JSON.stringify({
        msg_type: "AUDIO", request_id: requestId, seq, start_ms: seq * ms, duration_ms: ms,
        format: "pcm_s16le", sample_rate: rate, channels: 1}));
    const count = rate * ms / 1000;
    const bytes = new Uint8Array(2 + head.length + 2 * count);
    const view = new DataView(bytes.buffer);
    view.setUint16(0, head.length, false);
    bytes.set(head, 2);
    for (let i = 0; i < count; i++) {
        const t = (seq * count + i) / rate;
        view.setInt16(2 + head.length + 2 * i, Math.round(Math.sin(2 * Math.PI * 440 * t) * 8000), true);
    }
    return bytes.buffer;
};
window.hearsSound = () => {
    const analyser = window.agentClient.audio._analyser;
    const samples = new Float32Array(analyser.fftSize);
    analyser.getFloatTimeDomainData(samples);
    return samples.some((v) => Math.abs(v) > 0.01);
};
}"""


def record_sent_frames(page: Any) -> None:
    page.evaluate(
        """() => {
            window.sentFrames = [];
            const ws = window.agentClient._ws;
            const send = ws.send.bind(ws);
            ws.send = (text) => { window.sentFrames.push(JSON.parse(text)); send(text); };
        }"""
    )


def test_the_demo_plays_audio_and_a_barge_in_silences_it_at_once(demo: Demo, server):
    """AUDIO frames fed to the client's socket handler (the path of frames from the
    server) play; the analyser hears them; Stop silences every source at once, and
    the analyser then hears nothing: "played after interrupt" is 0."""
    demo.open(server)
    demo.page.evaluate(FRAMES_JS)
    demo.ask("Speak", words=100_000, speed=10)
    demo.wait_words(0, 1)
    record_sent_frames(demo.page)
    request_id = demo.page.evaluate(
        """async () => {
            const client = window.agentClient;
            await client.audio.context.resume();
            const [response] = client.streaming;
            response.voice = true;
            // Three seconds of speech, as 100 ms AUDIO frames through the socket handler.
            for (let seq = 0; seq < 30; seq++) {
                client._onMessage(window.audioFrame(response.requestId, seq, 100, 16000));
            }
            return response.requestId;
        }"""
    )
    stats = demo.stats()
    assert (stats["audioFrames"], stats["violations"]) == (30, 0)
    assert demo.page.evaluate("() => agentClient.audio.context.state") == "running"
    demo.page.wait_for_function(f"() => agentClient.audio.playedMs({request_id!r}) > 300")
    demo.page.wait_for_function("() => window.hearsSound()")  # the analyser hears it
    expect(demo.by("audio-queued")).to_have_text(re.compile(r"^[1-9]\d*$"))
    demo.shot("speaking")

    demo.by("stop").click()
    expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
    after = demo.page.evaluate(
        """() => ({pending: agentClient.audio.pending, queued: agentClient.audio.queuedMs(),
                   played: agentClient.audio.playedMs(agentClient.audio._entries[0]?.requestId)})"""
    )
    assert (after["pending"], after["queued"]) == (0, 0)
    expect(demo.by("audio-queued")).to_have_text("0")
    expect(demo.by("played-after")).to_have_text("0")
    assert not demo.page.evaluate("() => window.hearsSound()")
    interrupts = [
        f for f in demo.page.evaluate("() => window.sentFrames") if f["msg_type"] == "INTERRUPT"
    ]
    assert [f.get("request_id") for f in interrupts] == [request_id]
    played_ms = interrupts[0]["payload"]["played_ms"]
    assert 300 <= played_ms <= 3000
    assert abs(played_ms - after["played"]) <= 1
    demo.shot("silenced")


def test_the_speak_toggle_follows_what_the_server_offers(demo: Demo, server: ServedProcess):
    demo.open(server, "?speak=1")
    voices = demo.page.evaluate("() => agentClient.session.voices ?? []")
    toggle = demo.by("speak")
    expect(toggle).to_be_checked()
    if voices:
        expect(toggle).to_be_enabled()
        expect(demo.by("speak-hint")).to_contain_text("Voice ")
    else:
        expect(toggle).to_be_disabled()
        expect(demo.by("speak-hint")).to_have_text("This server offers no voices.")


def test_a_spoken_reply_from_the_server_plays_and_falls_silent_on_barge_in(demo: Demo, server):
    """End to end: `scripts/serve` speaks a lorem reply; the page plays it; Stop
    silences it at once, the INTERRUPT carries played_ms, and the reply's line then
    shows what the server says was heard."""
    demo.open(server, "?speak=1")
    if not demo.page.evaluate("() => (agentClient.session.voices ?? []).length"):
        pytest.skip("the server offers no voices here (speech off)")
    demo.page.evaluate(FRAMES_JS)
    expect(demo.by("speak")).to_be_enabled()
    demo.ask("Speak to me", words=200, speed=4)
    demo.wait_words(0, 1)
    record_sent_frames(demo.page)
    demo.page.wait_for_function("() => agentClient.stats.audioFrames > 0")
    request_id = demo.reply(0).get_attribute("data-request-id")
    demo.page.wait_for_function(f"() => agentClient.audio.playedMs({request_id!r}) > 600")
    demo.page.wait_for_function("() => window.hearsSound()")
    demo.by("stop").click()
    expect(demo.reply(0)).to_have_attribute("data-status", "interrupted")
    expect(demo.by("played-after")).to_have_text("0")
    expect(demo.by("audio-queued")).to_have_text("0")
    assert not demo.page.evaluate("() => window.hearsSound()")
    (interrupt,) = [
        f for f in demo.page.evaluate("() => window.sentFrames") if f["msg_type"] == "INTERRUPT"
    ]
    assert interrupt["request_id"] == request_id
    assert interrupt["payload"]["played_ms"] >= 600
    expect(demo.meta_of(0)).to_contain_text(re.compile(r"heard \d+\.\d\d s of \d+\.\d\d s: “\S"))
    assert demo.stats()["staleAfterAck"] == 0
    demo.shot("spoken")


# ---------------------------------------------------------------- first impressions:
# the defaults, the empty conversation, the session id, a lost connection's reason

DESKTOP = {"viewport": {"width": 1100, "height": 760}}
NARROW = {"viewport": {"width": 320, "height": 640}, "is_mobile": True}


def test_the_reply_options_default_to_the_lorem_agents_own(demo, server):
    demo.open(server)
    expect(demo.by("agent")).to_have_value("lorem")
    # What the agent's description says, the fields say.
    expect(demo.page.locator("#agent-description")).to_contain_text(
        f"words={LOREM_WORDS}, words_per_s={LOREM_WORDS_PER_S}"
    )
    expect(demo.by("words")).to_have_value(str(LOREM_WORDS))
    expect(demo.by("speed")).to_have_value(str(LOREM_WORDS_PER_S))
    # Sent as they are, they give the agent's own default reply.
    demo.by("prompt").fill("Defaults, please")
    demo.by("prompt").press("Enter")
    expect(demo.reply(0)).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(demo.text_of(0)).to_have_text(lorem_text(LOREM_WORDS))
    expect(demo.meta_of(0)).to_have_text(f"completed · {LOREM_WORDS} frames")


def test_an_empty_field_falls_back_to_the_same_default(demo, server):
    demo.open(server)
    demo.by("words").fill("")
    demo.by("speed").fill("0")
    demo.by("prompt").fill("No word count")
    demo.by("prompt").press("Enter")
    expect(demo.reply(0)).to_have_attribute("data-status", "completed")
    expect(demo.text_of(0)).to_have_text(lorem_text(LOREM_WORDS))


def test_an_empty_conversation_says_how_to_start_until_the_first_message(demo, server):
    demo.open(server)
    empty = demo.by("empty-state")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("No messages yet")
    expect(empty).to_contain_text("Type a message below and press Enter")
    expect(empty).to_contain_text("send another")
    expect(demo.by("log")).to_be_hidden()
    demo.shot("empty")
    demo.ask("Hello", words=3, speed=0)
    expect(empty).to_be_hidden()
    expect(demo.by("log")).to_be_visible()
    expect(demo.reply(0)).to_have_attribute("data-status", "completed")


def one_line(demo: Demo) -> dict[str, float]:
    """The session id's box, its line height and whether its text is cut."""
    return dict(
        demo.page.evaluate(
            """() => {
              const el = document.getElementById("session");
              const style = getComputedStyle(el);
              return {
                height: el.getBoundingClientRect().height,
                line: parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.5,
                cut: el.scrollWidth > el.clientWidth ? 1 : 0,
              };
            }"""
        )
    )


@pytest.mark.parametrize("size", ["desktop", "320px"])
def test_the_session_id_stays_on_one_line(browser, server, tmp_path, size):
    context = browser.new_context(**(DESKTOP if size == "desktop" else NARROW))
    demo = Demo(context.new_page(), tmp_path)
    try:
        demo.open(server)
        session = demo.by("session")
        expect(session).to_have_text(re.compile(r"^[0-9a-f]{16}$"))
        box = one_line(demo)
        assert box["height"] < 1.5 * box["line"], box  # one line, not two
        assert box["cut"] == 0, box  # and whole, at these widths
        expect(session).to_have_attribute("title", str(session.text_content()))
        demo.shot(f"session-{size}")
    finally:
        context.close()
    assert not demo.errors, demo.errors


def test_a_lost_connection_says_why_the_server_closed_it(browser, tmp_path):
    served = ServedProcess([str(ROOT / "scripts" / "serve")], tmp_path / "server.log").start()
    context = browser.new_context(**DESKTOP)
    demo = Demo(context.new_page(), tmp_path)
    try:
        demo.open(served, "?reconnect_max_ms=1000")
        assert served.stop(timeout=4) == 0  # SIGTERM: the server closes with 1001 and a reason
        note = demo.page.locator(".msg.system").first
        expect(note).to_have_text(
            "ConnectionConnection lost: closed by the server "
            "(code 1001: SIGTERM received). Reconnecting…"
        )
        # The session ended for good (1001): the attempts that follow, refused while the
        # server is down, are for a new session, not a resume of the old one.
        for _ in range(2):
            with demo.page.expect_websocket(timeout=RECONNECT_TIMEOUT_MS):
                pass
        expect(demo.by("status")).to_have_text("reconnecting")
        expect(demo.by("resume")).to_have_attribute("data-state", "")
        expect(demo.by("resume")).to_have_text("")
        demo.shot("connection-lost")
    finally:
        context.close()
        served.stop()
    assert not [e for e in demo.errors if "WebSocket connection" not in e], demo.errors
