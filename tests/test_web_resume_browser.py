"""The demo page resumes a dropped session (protocol v1.2) in a real Chromium.

The page and agent-client.js come from a real `scripts/serve`; the WebSocket is answered
by Playwright's WebSocket routing, playing a server that offers resume, so the page's side
is proven here whatever the server does. Each connection is a scripted fake: the first
streams part of a reply and drops (a close without a status, as a lost network gives), the
next one answers RESUME. Every wait is on page state, never on the clock.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CHROMIUM
from served import ServedProcess
from test_web_browser import LAUNCH_ARGS, Demo, expect, playwright_api, server  # noqa: F401

pytestmark = pytest.mark.browser

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("the browser tests run on Linux", allow_module_level=True)

TOKEN = "resume-token-0123456789abcdef0123"
NEXT_TOKEN = "resume-token-fedcba9876543210fedc"
WORDS = [f"w{i} " for i in range(10)]


class FakeResumingServer:
    """Plays a v1.2 server on each WebSocket the page opens; records what it was sent."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.routes: list[Any] = []
        self.received: list[list[dict[str, Any]]] = []
        self.request_id: str | None = None
        #: The RESUME received and not yet answered: the test decides when RESUMED goes.
        self.pending_resume: tuple[Any, dict[str, Any]] | None = None
        self.released = False

    def connect(self, route: Any) -> None:
        index = len(self.routes)
        self.routes.append(route)
        self.received.append([])
        route.on_message(lambda message: self._on_message(index, route, message))
        resume = {"token": TOKEN if index == 0 else f"unused-{index}", "window_s": 30}
        self.send(route, "SESSION", session_id=f"session-{index}", payload=self._session(resume))

    @staticmethod
    def _session(resume: dict[str, Any]) -> dict[str, Any]:
        agent = {"description": "words", "available": True}
        return {
            "protocol": "1.2",
            "server": "fake",
            "agents": {"lorem": agent},
            "default_agent": "lorem",
            "limits": {},
            "resume": resume,
        }

    @staticmethod
    def send(route: Any, msg_type: str, **fields: Any) -> None:
        frame = {"msg_type": msg_type, "msg_id": "s1", "session_id": "session-0", "ts": 0}
        route.send(json.dumps({**frame, **fields}))

    def stream(self, route: Any, seqs: range) -> None:
        for seq in seqs:
            payload = {"seq": seq, "delta": WORDS[seq]}
            self.send(route, "STREAM", request_id=self.request_id, payload=payload)

    def _on_message(self, index: int, route: Any, message: str | bytes) -> None:
        frame = json.loads(message)
        self.received[index].append(frame)
        if frame["msg_type"] == "HEARTBEAT":
            self.send(route, "HEARTBEAT", ref=frame["msg_id"], payload={})
        elif frame["msg_type"] == "REQUEST" and index == 0:
            self.request_id = frame["request_id"]
            self.stream(route, range(5))
        elif frame["msg_type"] == "RESUME" and self.refuse:
            payload = {"code": "RESUME_UNKNOWN", "message": "no such session"}
            self.send(route, "ERROR", ref=frame["msg_id"], payload=payload)
            route.close(code=1008, reason="RESUME_UNKNOWN")
        elif frame["msg_type"] == "RESUME":
            self.pending_resume = (route, frame)
            if self.released:
                self._answer()

    def resume(self) -> None:
        """Let RESUME be answered, now or when it comes."""
        self.released = True
        if self.pending_resume is not None:
            self._answer()

    def _answer(self) -> None:
        """RESUMED, then a replay that overlaps what arrived before the drop, then DONE."""
        assert self.pending_resume is not None
        assert self.request_id is not None
        route, resume = self.pending_resume
        self.pending_resume = None
        payload = {
            "requests": {self.request_id: "running"},
            "interrupts": {},
            "resume": {"token": NEXT_TOKEN, "window_s": 30},
        }
        self.send(route, "RESUMED", ref=resume["msg_id"], payload=payload)
        self.stream(route, range(3, len(WORDS)))  # 3 and 4 arrived before the drop
        done = {"status": "completed", "interrupted": False, "frames": len(WORDS)}
        self.send(route, "DONE", request_id=self.request_id, payload=done)


def in_chromium(tmp_path: Path, scenario: Callable[[Demo], None], **context: Any) -> None:
    """Run `scenario` on the demo page in a Chromium of its own, in a thread of its own.

    Playwright's sync API allows one instance per thread, and tests/test_web_browser.py
    keeps its Chromium open in this one for the whole session.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with playwright_api.sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
                try:
                    page = browser.new_context(**context).new_page()
                    demo = Demo(page, tmp_path)
                    scenario(demo)
                    assert not demo.errors, demo.errors
                finally:
                    browser.close()
        except BaseException as error:  # handed to the test's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="chromium")
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the browser scenario did not end within 120 s"
    if failure:
        raise failure[0]


DESKTOP = {"viewport": {"width": 1100, "height": 760}}


def open_with(demo: Demo, served: ServedProcess, fake: FakeResumingServer) -> None:
    demo.page.route_web_socket("**/ws", fake.connect)
    demo.open(served)


def header_box(demo: Demo) -> dict[str, float]:
    return dict(demo.page.locator("header.top").bounding_box())


def test_a_dropped_reply_resumes_with_every_word_once(server, tmp_path):  # noqa: F811
    in_chromium(tmp_path, lambda page: a_dropped_reply_resumes(page, server), **DESKTOP)


def a_dropped_reply_resumes(page: Demo, server: ServedProcess) -> None:  # noqa: F811
    fake = FakeResumingServer()
    open_with(page, server, fake)
    before = header_box(page)
    page.ask("Tell me ten words")
    expect(page.text_of(0)).to_have_text("".join(WORDS[:5]))
    fake.routes[0].close()  # no status: a dropped connection
    expect(page.by("resume")).to_have_text("reconnecting…")
    expect(page.reply(0)).to_have_attribute("data-status", "streaming")
    assert header_box(page) == before, "the resume status moved the header"
    page.shot("reconnecting")
    fake.resume()
    expect(page.reply(0)).to_have_attribute("data-status", "completed")
    expect(page.text_of(0)).to_have_text("".join(WORDS))
    assert len(fake.routes) == 2
    resume = fake.received[1][0]  # the first frame of the new connection
    assert resume["msg_type"] == "RESUME"
    assert resume["session_id"] == "session-0"
    assert resume["payload"] == {"token": TOKEN, "last_seq": {fake.request_id: 4}}
    expect(page.by("resume")).to_have_text("resumed")
    expect(page.by("status")).to_have_text("open")
    assert header_box(page) == before, "the resume status moved the header"
    stats = page.stats()
    assert (stats["resumes"], stats["duplicatesDropped"], stats["violations"]) == (1, 2, 0)
    assert page.page.evaluate("() => window.agentClient.sessionId") == "session-0"
    page.shot("resumed")
    expect(page.by("resume")).to_have_text("", timeout=10_000)  # it fades, in place
    assert header_box(page) == before


def test_a_refused_resume_says_so_and_starts_a_new_session(server, tmp_path):  # noqa: F811
    in_chromium(tmp_path, lambda page: a_refused_resume(page, server), **DESKTOP)


def a_refused_resume(page: Demo, server: ServedProcess) -> None:  # noqa: F811
    fake = FakeResumingServer(refuse=True)
    open_with(page, server, fake)
    page.ask("Tell me ten words")
    expect(page.text_of(0)).to_have_text("".join(WORDS[:5]))
    fake.routes[0].close()
    expect(page.by("resume")).to_have_text("resume failed")
    expect(page.reply(0)).to_have_attribute("data-status", "disconnected")
    expect(page.by("log")).to_contain_text("Could not resume the session (RESUME_UNKNOWN)")
    expect(page.by("status")).to_have_text("open")  # a new session, on a third connection
    assert len(fake.routes) == 3
    assert [f["msg_type"] for f in fake.received[2]][:1] != ["RESUME"]
    assert page.page.evaluate("() => window.agentClient.sessionId") == "session-2"
    page.shot("resume-failed")


def test_the_resume_status_fits_a_320_px_screen_without_moving_it(server, tmp_path):  # noqa: F811
    narrow = {"viewport": {"width": 320, "height": 640}, "is_mobile": True}
    in_chromium(tmp_path, lambda demo: fits_a_narrow_screen(demo, server), **narrow)


def fits_a_narrow_screen(demo: Demo, server: ServedProcess) -> None:  # noqa: F811
    fake = FakeResumingServer()
    open_with(demo, server, fake)
    before = header_box(demo)
    demo.ask("Tell me ten words")
    expect(demo.text_of(0)).to_have_text("".join(WORDS[:5]))
    fake.routes[0].close()
    expect(demo.by("resume")).to_have_text("reconnecting…")
    assert header_box(demo) == before
    box = demo.by("resume").bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 320
    assert demo.page.evaluate("() => document.documentElement.scrollWidth") <= 320
    fake.resume()
    expect(demo.by("resume")).to_have_text("resumed")
    assert header_box(demo) == before
    demo.shot("320px-resumed")
