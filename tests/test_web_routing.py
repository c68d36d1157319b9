"""The pure parts of the HTTP side: where a request goes, and conditional requests."""

from __future__ import annotations

import pytest

from trio_agent.server.web.assets import CONTENT_TYPES, content_type_for, load_assets, make_asset
from trio_agent.server.web.routes import HttpRequest, is_not_modified
from trio_agent.server.web.routing import (
    Route,
    header_tokens,
    is_websocket_upgrade,
    route,
    target_path,
)

UPGRADE = [(b"host", b"x"), (b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"WebSocket")]


def routed(target: str, method: bytes = b"GET", headers=(), *, page: bool = True):
    return route(method, target.encode(), headers, websocket_path="/ws", page=page)


@pytest.mark.parametrize(
    ("target", "expected", "asset"),
    [
        ("/", Route.PAGE, None),
        ("/?x=1", Route.PAGE, None),
        ("/healthz", Route.HEALTH, None),
        ("/readyz", Route.READY, None),
        ("/metrics", Route.METRICS, None),
        ("/metrics?name[]=x", Route.METRICS, None),
        ("/static/agent-client.js", Route.STATIC, "agent-client.js"),
        ("/static/agent%2Dclient.js", Route.STATIC, "agent-client.js"),
        ("/static/../server.py", Route.STATIC, "../server.py"),
        ("/static/%2e%2e%2fserver.py", Route.STATIC, "../server.py"),
        ("/ws", Route.UPGRADE_REQUIRED, None),
        ("/healthz/", Route.NOT_FOUND, None),
        ("/nowhere", Route.NOT_FOUND, None),
        ("//ws", Route.NOT_FOUND, None),
        ("http://example.com/healthz", Route.HEALTH, None),
    ],
)
def test_routes(target, expected, asset):
    decision = routed(target)
    assert decision.route is expected
    assert decision.asset == asset
    assert decision.method_allowed


def test_an_upgrade_to_the_websocket_path_goes_to_the_websocket():
    assert routed("/ws", headers=UPGRADE).route is Route.WEBSOCKET
    assert routed("/ws?token=t", headers=UPGRADE).route is Route.WEBSOCKET


def test_the_websocket_path_is_compared_as_sent_like_the_handshake_does():
    assert routed("/w%73", headers=UPGRADE).route is Route.NOT_FOUND


def test_an_upgrade_elsewhere_is_plain_http():
    assert routed("/elsewhere", headers=UPGRADE).route is Route.NOT_FOUND
    assert routed("/healthz", headers=UPGRADE).route is Route.HEALTH


@pytest.mark.parametrize(
    "headers",
    [
        [(b"upgrade", b"websocket")],  # no Connection: upgrade
        [(b"connection", b"upgrade")],  # no Upgrade
        [(b"connection", b"upgrade"), (b"upgrade", b"h2c")],
    ],
)
def test_half_an_upgrade_is_not_one(headers):
    assert not is_websocket_upgrade(b"GET", headers)
    assert routed("/ws", headers=headers).route is Route.UPGRADE_REQUIRED


def test_an_upgrade_must_be_a_get():
    assert not is_websocket_upgrade(b"POST", UPGRADE)
    decision = routed("/ws", b"POST", UPGRADE)
    assert decision.route is Route.UPGRADE_REQUIRED
    assert not decision.method_allowed


def test_header_tokens_span_repeated_headers():
    headers = [(b"connection", b"keep-alive"), (b"connection", b" Upgrade ,")]
    assert header_tokens(headers, b"connection") == {b"keep-alive", b"upgrade"}


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
def test_known_paths_refuse_other_methods_and_unknown_paths_stay_404(method):
    assert not routed("/healthz", method).method_allowed
    assert not routed("/static/agent-client.js", method).method_allowed
    decision = routed("/nowhere", method)
    assert decision.route is Route.NOT_FOUND


def test_head_is_allowed_everywhere_get_is():
    assert routed("/metrics", b"HEAD").method_allowed


def test_no_page_means_slash_is_not_found():
    assert routed("/", page=False).route is Route.NOT_FOUND
    assert routed("/static/agent-client.js", page=False).route is Route.STATIC


def test_target_path():
    assert target_path(b"/a/b?c=/d") == "/a/b"
    assert target_path(b"https://h:1/x?y") == "/x"
    assert target_path(b"http://h") == "/"
    assert routed("*", b"OPTIONS").route is Route.NOT_FOUND


# ---------------------------------------------------------------- assets and validators

ASSET = make_asset("a.js", b"export {}", last_modified=1_700_000_000.5)


def conditional(**headers: str) -> HttpRequest:
    return HttpRequest(
        b"GET",
        b"/static/a.js",
        [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    )


def test_etag_match_is_not_modified():
    assert is_not_modified(conditional(if_none_match=ASSET.etag), ASSET)
    assert is_not_modified(conditional(if_none_match=f'"other", W/{ASSET.etag}'), ASSET)
    assert is_not_modified(conditional(if_none_match="*"), ASSET)
    assert not is_not_modified(conditional(if_none_match='"other"'), ASSET)


def test_if_none_match_wins_over_if_modified_since():
    request = conditional(
        if_none_match='"other"', if_modified_since="Fri, 01 Jan 2100 00:00:00 GMT"
    )
    assert not is_not_modified(request, ASSET)


def test_if_modified_since():
    assert is_not_modified(conditional(if_modified_since="Tue, 14 Nov 2023 22:13:20 GMT"), ASSET)
    assert not is_not_modified(
        conditional(if_modified_since="Tue, 14 Nov 2023 22:13:19 GMT"), ASSET
    )
    assert not is_not_modified(conditional(if_modified_since="yesterday"), ASSET)
    assert not is_not_modified(conditional(), ASSET)


def test_content_types_come_from_our_table():
    assert content_type_for("x/agent-client.js") == "text/javascript; charset=utf-8"
    assert content_type_for("INDEX.HTML") == CONTENT_TYPES[".html"]
    assert content_type_for("blob") == "application/octet-stream"


def test_assets_hold_the_client_and_the_page_and_no_page_without_it():
    with_page = load_assets(demo=True)
    assert {"agent-client.js", "demo/index.html", "demo/demo.js", "demo/demo.css"} <= set(with_page)
    without = load_assets(demo=False)
    assert "agent-client.js" in without
    assert not any(name.startswith("demo/") for name in without)
    client = with_page["agent-client.js"]
    assert client.etag.startswith('"')
    assert client.last_modified is not None
