"""Where a request on the agent's port goes: the WebSocket, or a plain HTTP route.

One listener serves both protocols, the way uvicorn and hypercorn do. The first
request of a connection decides: a WebSocket upgrade to the configured path hands
the connection to trio-websocket, anything else is answered over HTTP/1.1. This
module is that decision, and the table of HTTP routes, as pure functions of the
request line and headers: no I/O, no state, so every case is a one-line test.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote, urlsplit

#: Methods every HTTP route answers; anything else gets 405 with this ``Allow``.
ALLOWED_METHODS = (b"GET", b"HEAD")

#: The prefix of the client files, ``/static/agent-client.js`` and friends.
STATIC_PREFIX = "/static/"


class Route(Enum):
    WEBSOCKET = "websocket"  # an upgrade to the configured path: trio-websocket takes over
    PAGE = "page"  # /: the demo page (absent with --no-web)
    STATIC = "static"  # /static/<name>: the client module and the page's files
    HEALTH = "healthz"  # /healthz: the process runs
    READY = "readyz"  # /readyz: the server accepts sessions (503 while draining)
    METRICS = "metrics"  # /metrics: Prometheus exposition
    ASYNCAPI = "asyncapi"  # /asyncapi.json: the protocol as an AsyncAPI 3.0 document
    UPGRADE_REQUIRED = "upgrade_required"  # the WebSocket path without an upgrade: 426
    NOT_FOUND = "not_found"


_FIXED_ROUTES = {
    "/healthz": Route.HEALTH,
    "/readyz": Route.READY,
    "/metrics": Route.METRICS,
    "/asyncapi.json": Route.ASYNCAPI,
}


@dataclass(frozen=True)
class Routed:
    """The decision for one request.

    ``asset`` is the name under ``/static/`` for :attr:`Route.STATIC` (percent-decoded,
    not yet known to exist). ``method_allowed`` is ``False`` when the route exists
    but does not answer this method (405).
    """

    route: Route
    asset: str | None = None
    method_allowed: bool = True


def header_tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """The comma-separated tokens of every ``name`` header, lower-cased.

    ``Connection: keep-alive, Upgrade`` gives ``{b"keep-alive", b"upgrade"}``;
    ``name`` must be lower-case (h11 lower-cases header names).
    """
    return {
        token.strip().lower()
        for key, value in headers
        if key == name
        for token in value.split(b",")
        if token.strip()
    }


def is_websocket_upgrade(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """A request that asks to switch to WebSocket (RFC 6455, section 4.1).

    Only the switch itself is checked here; the rest of the handshake (version,
    key) is wsproto's to validate once trio-websocket has the connection.
    """
    headers = list(headers)
    return (
        method == b"GET"
        and b"websocket" in header_tokens(headers, b"upgrade")
        and b"upgrade" in header_tokens(headers, b"connection")
    )


def framing_error(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request's body framing is ambiguous, or ``None`` when it is not.

    A request with both ``Content-Length`` and ``Transfer-Encoding`` is the shape of
    request smuggling: a proxy in front may frame it by one header and this server
    by the other, and disagree on where the next request starts. RFC 9112 (section
    6.3) says to treat it as an error and close the connection after answering.
    """
    names = {key.lower() for key, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return "Content-Length and Transfer-Encoding in one request (RFC 9112, section 6.3)"
    return None


def websocket_key_problem(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a WebSocket upgrade's ``Sec-WebSocket-Key`` is malformed, or ``None``.

    RFC 6455 (sections 4.2.1 and 11.3.1) asks for exactly one such header, whose
    value is the base64 of 16 bytes; a server must answer anything else with 400
    rather than switch protocols. wsproto only checks that a key is there.
    """
    keys = [value for key, value in headers if key == b"sec-websocket-key"]
    if len(keys) != 1:
        return f"a WebSocket handshake needs one Sec-WebSocket-Key header, not {len(keys)}"
    try:
        decoded = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 16:
        return "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)"
    return None


def target_path(target: bytes) -> str:
    """The path of a request target, still percent-encoded.

    Origin-form (``/a/b?q``) is cut at the query; absolute-form
    (``http://host/a/b?q``, sent through proxies) gives its path. A target that
    starts with ``//`` is a path, not a network location.
    """
    text = target.decode("latin-1")
    if text.startswith("/"):
        return text.split("?", 1)[0]
    return urlsplit(text).path or "/"


def route(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    websocket_path: str,
    page: bool,
) -> Routed:
    """Decide where one request goes.

    :param target: the request target as sent (origin-form ``/path?query``, or
        absolute-form from a proxy).
    :param websocket_path: the agent endpoint (``ServerConfig.path``). It is compared
        as sent, not percent-decoded, exactly as the WebSocket handshake compares it.
    :param page: whether the demo page is served (``--no-web`` turns it off).

    An upgrade to any other path is an ordinary request here, and ends as a 404
    (no WebSocket endpoint there) or a 405.
    """
    raw_path = target_path(target)
    headers = list(headers)
    if raw_path == websocket_path:
        if is_websocket_upgrade(method, headers):
            return Routed(Route.WEBSOCKET)
        return Routed(Route.UPGRADE_REQUIRED, method_allowed=method in ALLOWED_METHODS)
    path = unquote(raw_path, errors="replace")
    asset: str | None = None
    if path == "/" and page:
        found = Route.PAGE
    elif path.startswith(STATIC_PREFIX):
        found, asset = Route.STATIC, path.removeprefix(STATIC_PREFIX)
    else:
        found = _FIXED_ROUTES.get(path, Route.NOT_FOUND)
    if found is Route.NOT_FOUND:
        return Routed(found)
    return Routed(found, asset=asset, method_allowed=method in ALLOWED_METHODS)
