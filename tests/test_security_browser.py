"""Token and Origin as a real browser meets them: Chromium against `scripts/serve --token`.

A browser cannot set headers on a WebSocket, so it offers the token as a
subprotocol next to ``trio-agent.v1``, and it fails the handshake itself if the
server selects none of its offers: the server must select ``trio-agent.v1`` and
never the token. A browser also cannot say why a handshake failed, so the tests
read the reason from the server's ``trio_agent_handshakes_refused_total`` counter,
which is counted before the refusal is written.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import CHROMIUM
from served import ROOT, ServedProcess
from test_web_browser import LAUNCH_ARGS

pytestmark = pytest.mark.browser

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("the browser tests run on Linux", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.sync_api")

TOKEN = "br0wser-T0ken"

#: Open a WebSocket from the page; resolve with its outcome, never reject.
CONNECT = """async ([url, protocols]) => {
    const ws = new WebSocket(url, protocols);
    return await new Promise((done) => {
        ws.onmessage = (event) => {
            done({ open: true, protocol: ws.protocol, first: JSON.parse(event.data).msg_type });
            ws.close();
        };
        ws.onclose = (event) => done({ open: false, code: event.code });
    });
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A Chromium of this module's own, closed when the module is done: Playwright's
    sync API runs one instance at a time, and the other browser tests start theirs."""
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    # Fresh counters on every scrape: the tests read refusals from /metrics.
    command = [str(ROOT / "scripts" / "serve"), "--token", TOKEN, "--metrics-cache-s", "0"]
    served = ServedProcess(command, log).start()
    yield served
    assert served.stop() == 0
    assert TOKEN not in log.read_text()


def ws_url(served: ServedProcess) -> str:
    return f"ws://127.0.0.1:{served.port}/ws"


def refused(page: Any, served: ServedProcess, code: int) -> int:
    """How many handshakes the server has refused with ``code``, from /metrics."""
    text = page.evaluate("async (url) => (await fetch(url)).text()", served.http_url + "metrics")
    match = re.search(
        rf'^trio_agent_handshakes_refused_total\{{code="{code}"\}} (\S+)$', text, re.M
    )
    return int(float(match.group(1))) if match else 0


def test_a_page_of_the_same_origin_connects_with_its_token(browser, locked):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(locked.http_url + "healthz")  # an origin of the server's own
        with_token = page.evaluate(
            CONNECT, [ws_url(locked), ["trio-agent.v1", f"trio-agent.token.{TOKEN}"]]
        )
        assert with_token == {"open": True, "protocol": "trio-agent.v1", "first": "SESSION"}
        before = refused(page, locked, 401)
        for protocols in (["trio-agent.v1"], ["trio-agent.v1", "trio-agent.token.wrong"]):
            assert page.evaluate(CONNECT, [ws_url(locked), protocols]) == {
                "open": False,
                "code": 1006,
            }
        assert refused(page, locked, 401) == before + 2
    finally:
        context.close()


def test_a_page_of_another_origin_is_refused_even_with_the_token(browser, locked):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(locked.http_url + "healthz")
        before = refused(page, locked, 403)
        elsewhere = context.new_page()
        elsewhere.set_content("<!doctype html><title>elsewhere</title>")  # origin "null"
        outcome = elsewhere.evaluate(
            CONNECT, [ws_url(locked), ["trio-agent.v1", f"trio-agent.token.{TOKEN}"]]
        )
        assert outcome == {"open": False, "code": 1006}
        assert refused(page, locked, 403) == before + 1
    finally:
        context.close()
