#!/usr/bin/env python3
"""Take the demo page's screenshots for the docs, from a real `scripts/serve` in Chromium.

    scripts/demo_screenshots.py [--out docs] [--chromium PATH] [--only empty|barge-in|voice]

Writes, at 1100 x 760:

- ``demo-empty.png``: the page just connected, before the first message;
- ``demo-barge-in.png``: a reply cut by a second question, its ACK shown, the second one streaming;
- ``demo-voice.png``: the same with "Speak replies" on: the cut reply says what was heard
  (skipped, and said so, when the server offers no voices: espeak-ng is missing).

Needs Playwright (the ``dev`` extra) and a Chromium (Debian's ``chromium``). Every wait
is on the page's state; a page error fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


@contextmanager
def served(timeout_s: float = 30.0) -> Iterator[str]:
    """`scripts/serve` on a free port; yields its HTTP URL, stops it (SIGTERM) after."""
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "serve"), "--port", "0", "--log-format", "json"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    url: list[str] = []
    listening = threading.Event()

    def drain() -> None:  # keeps the pipe empty
        assert proc.stderr is not None
        for line in proc.stderr:
            if not listening.is_set() and line.startswith("{"):
                record = json.loads(line)["record"]
                if record["message"] == "listening":
                    url.append(record["extra"]["http"])
                    listening.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not listening.wait(timeout_s):
            raise RuntimeError(f"scripts/serve did not listen within {timeout_s:g} s")
        yield url[0]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


class Page:
    """The demo page, driven through its data-testid attributes."""

    def __init__(self, page: Any) -> None:
        from playwright.sync_api import expect

        self.page = page
        # Generous: a spoken reply goes at the synthesiser's pace, on a busy machine too.
        expect.set_options(timeout=30_000)
        self.expect = expect
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.expect(self.by("status")).to_have_text("open")

    def ask(self, prompt: str, *, words: int, speed: float) -> None:
        self.by("words").fill(str(words))
        self.by("speed").fill(str(speed))
        self.by("prompt").fill(prompt)
        self.by("prompt").press("Enter")

    def words_of(self, n: int, at_least: int) -> None:
        import re

        text = self.by("reply").nth(n).get_by_test_id("reply-text")
        self.expect(text).to_have_text(re.compile(rf"^(\S+\s+){{{at_least - 1}}}\S+"))

    def shot(self, path: Path) -> None:
        # Waits for a new frame first, so the last text painted is in the picture.
        self.page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done()))")
        self.page.screenshot(path=path, full_page=True)
        if self.errors:
            raise RuntimeError(f"page errors: {self.errors}")
        print(f"wrote {path}")


def empty(page: Page, url: str, out: Path) -> None:
    page.open(url)
    page.expect(page.by("empty-state")).to_be_visible()
    page.shot(out / "demo-empty.png")


def barge_in(page: Page, url: str, out: Path) -> None:
    page.open(url)
    page.ask("First question", words=200_000, speed=25)
    page.words_of(0, 20)
    page.ask("Second question, sooner", words=20, speed=25)
    page.expect(page.by("reply").nth(0).get_by_test_id("reply-meta")).to_contain_text("ACK in")
    page.words_of(1, 6)
    page.page.locator("#prompt").blur()
    page.shot(out / "demo-barge-in.png")


def voice(page: Page, url: str, out: Path) -> bool:
    page.open(url + "?speak=1")
    if not page.page.evaluate("() => (agentClient.session.voices ?? []).length"):
        print("demo-voice.png skipped: the server offers no voices (is espeak-ng installed?)")
        return False
    page.ask("Tell me a story, out loud", words=200, speed=4)
    page.words_of(0, 6)
    page.page.wait_for_function("() => agentClient.stats.audioFrames > 0")
    page.ask("Stop, I have a question", words=200, speed=4)
    meta = page.by("reply").nth(0).get_by_test_id("reply-meta")
    page.expect(meta).to_contain_text("heard")
    page.words_of(1, 3)
    page.expect(page.by("played-after")).to_have_text("0")
    page.page.locator("#prompt").blur()
    page.shot(out / "demo-voice.png")
    return True


SCENES: dict[str, Callable[[Page, str, Path], object]] = {
    "empty": empty,
    "barge-in": barge_in,
    "voice": voice,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write the PNGs")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("TRIO_AGENT_CHROMIUM") or shutil.which("chromium"),
        help="the Chromium to drive (default: `chromium` on PATH)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENES),
        help="take only this screenshot (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    if args.chromium is None:
        parser.error("no Chromium: install Debian's chromium or pass --chromium PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        parser.error("Playwright is not installed (pip install -e '.[dev]')")
    args.out.mkdir(parents=True, exist_ok=True)
    with served() as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=LAUNCH_ARGS)
        try:
            for name, scene in SCENES.items():
                if args.only and name not in args.only:
                    continue
                context = browser.new_context(
                    viewport={"width": 1100, "height": 760}, color_scheme="light"
                )
                try:
                    scene(Page(context.new_page()), url, args.out)
                finally:
                    context.close()
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
