"""The plain HTTP side of the agent's port: a request in, a response out.

:class:`WebApp` answers every request that is not the agent's WebSocket, with no
I/O; docs/web.md lists the endpoints.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus

from trio_agent.observability.metrics import ServerMetrics
from trio_agent.protocol.asyncapi import asyncapi_json
from trio_agent.server.admission import same_secret
from trio_agent.server.web.assets import Asset, make_asset
from trio_agent.server.web.routing import ALLOWED_METHODS, Route, Routed, route

#: The demo page, under ``static/``.
PAGE_ASSET = "demo/index.html"

#: The name the AsyncAPI document is served under (its content type comes from it).
ASYNCAPI_NAME = "asyncapi.json"

#: The page names its WebSocket path in this tag; the server rewrites it when it
#: listens on another path (``--path``).
PAGE_PATH_TAG = '<meta name="trio-agent-websocket-path" content="{}">'

#: What the demo page may load and connect to: its own origin, nothing else.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class HttpRequest:
    """What a handler needs of a request: h11's fields, header names lower-cased."""

    method: bytes
    target: bytes
    headers: Sequence[tuple[bytes, bytes]] = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class HttpResponse:
    """A complete response. ``Content-Length`` and ``Connection`` are the shell's to add."""

    status: int
    headers: Headers = ()
    body: bytes = b""


def text_response(status: int, text: str, headers: Headers = ()) -> HttpResponse:
    return HttpResponse(
        status,
        (
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Cache-Control", "no-store"),
            *headers,
        ),
        text.encode("utf-8"),
    )


def is_not_modified(request: HttpRequest, asset: Asset) -> bool:
    """Whether a conditional GET can be answered with 304 (RFC 9110, section 13.2.2).

    ``If-None-Match`` wins over ``If-Modified-Since`` when both are sent; ETags are
    compared weakly, as a GET allows.
    """
    if_none_match = request.header(b"if-none-match")
    if if_none_match is not None:
        tags = {
            tag.strip().removeprefix("W/") for tag in if_none_match.decode("latin-1").split(",")
        }
        return "*" in tags or asset.etag in tags
    if_modified_since = request.header(b"if-modified-since")
    if if_modified_since is None or asset.last_modified is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since.decode("latin-1")).timestamp()
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored, as RFC 9110 says
    return int(asset.last_modified) <= since


class WebApp:
    """Answers the plain HTTP requests of one server.

    :param websocket_path: the agent endpoint (``ServerConfig.path``).
    :param page: serve the demo page at ``/`` (``--no-web`` turns it off).
    :param assets: the files under ``/static/`` by name (see
        :func:`~trio_agent.server.web.assets.load_assets`).
    :param ready: whether the server accepts sessions now (``/readyz``).
    :param degraded: why the server is degraded though ready (``/readyz`` says it), or ``None``.
    :param metrics: the server's metrics (``/metrics``).
    :param host_refusal: why a request addressed to a ``Host`` is refused (403), or
        ``None``: the admission policy's DNS rebinding rule
        (:meth:`~trio_agent.server.admission.AdmissionPolicy.host_refusal`). ``None``
        checks no ``Host``.
    :param metrics_token: when set, ``/metrics`` answers only a request with
        ``Authorization: Bearer <metrics_token>`` (401 otherwise).
    :param metrics_cache_s: how long a rendered ``/metrics`` body is served again: a
        client that asks in a loop gets the same body, and the server renders it at
        most once per ``metrics_cache_s`` (0: every time).
    :param clock: a monotonic clock, in seconds: how old a cached ``/metrics`` body is.
    :param node: this node's id in a cluster (``--node-id``), sent as the
        ``X-Trio-Agent-Node`` header of ``/healthz`` and ``/readyz`` (which worker or
        node answered, behind a load balancer); ``None``: no such header.
    """

    def __init__(
        self,
        *,
        websocket_path: str,
        page: bool,
        assets: Mapping[str, Asset],
        ready: Callable[[], bool],
        degraded: Callable[[], str | None] = lambda: None,
        metrics: ServerMetrics,
        host_refusal: Callable[[str], str | None] | None = None,
        metrics_token: str | None = None,
        metrics_cache_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        node: str | None = None,
    ) -> None:
        self._node_header: tuple[tuple[str, str], ...] = (
            (("X-Trio-Agent-Node", node),) if node else ()
        )
        self.websocket_path = websocket_path
        self._host_refusal = host_refusal
        self._metrics_token = metrics_token
        self._metrics_cache_s = metrics_cache_s
        self._clock = clock
        self.page = page
        self._ready = ready
        self._degraded = degraded
        self.metrics = metrics
        self._assets = dict(assets)
        #: The AsyncAPI document, rendered at its first request (30 ms) and kept.
        self._asyncapi: Asset | None = None
        if page and PAGE_ASSET in assets:
            self._assets[PAGE_ASSET] = self._page_for(assets[PAGE_ASSET], websocket_path)

    @staticmethod
    def _page_for(asset: Asset, websocket_path: str) -> Asset:
        default = PAGE_PATH_TAG.format("/ws").encode()
        mine = PAGE_PATH_TAG.format(html.escape(websocket_path, quote=True)).encode()
        return make_asset(asset.name, asset.body.replace(default, mine), asset.last_modified)

    def route(self, request: HttpRequest) -> Routed:
        return route(
            request.method,
            request.target,
            request.headers,
            websocket_path=self.websocket_path,
            page=self.page,
        )

    def host_refusal(self, request: HttpRequest) -> str | None:
        """Why ``request`` is refused for its ``Host`` (answer 403 with it), or ``None``."""
        if self._host_refusal is None:
            return None
        host = request.header(b"host")
        return self._host_refusal(host.decode("latin-1") if host is not None else "")

    def respond(self, request: HttpRequest, routed: Routed, *, now: float) -> HttpResponse:
        """The response to ``request``, which :meth:`route` sent to ``routed``.

        ``now`` (seconds since the epoch) fills the ``Date`` header.
        """
        return self._with_common_headers(self._dispatch(request, routed), now)

    def error(self, status: int, *, now: float) -> HttpResponse:
        """The answer to a request that could not be read (400, 431, ...)."""
        return self._with_common_headers(
            text_response(status, f"{HTTPStatus(status).phrase}\n"), now
        )

    def refusal(self, status: int, reason: str, *, now: float) -> HttpResponse:
        """A refusal whose body says why (``reason`` must hold no secret)."""
        return self._with_common_headers(text_response(status, f"{reason}\n"), now)

    @staticmethod
    def _with_common_headers(response: HttpResponse, now: float) -> HttpResponse:
        return HttpResponse(
            response.status,
            (
                ("Date", formatdate(now, usegmt=True)),
                ("X-Content-Type-Options", "nosniff"),
                *response.headers,
            ),
            response.body,
        )

    def _dispatch(self, request: HttpRequest, routed: Routed) -> HttpResponse:
        if routed.route is Route.NOT_FOUND:
            upgrade = request.header(b"upgrade") is not None
            return text_response(404, "no WebSocket endpoint here\n" if upgrade else "not found\n")
        if routed.route is Route.WEBSOCKET:
            raise ValueError("a WebSocket upgrade is not answered over HTTP")
        if not routed.method_allowed:
            allow = ", ".join(m.decode() for m in ALLOWED_METHODS)
            return text_response(405, "method not allowed\n", (("Allow", allow),))
        if routed.route is Route.HEALTH:
            return text_response(200, "ok\n", self._node_header)
        if routed.route is Route.READY:
            if self._ready():
                problem = self._degraded()
                if problem:
                    # Still ready: sessions are served; only what needs the problem's
                    # part (resume across nodes) is not (docs/cluster.md).
                    return text_response(200, f"ready, degraded: {problem}\n", self._node_header)
                return text_response(200, "ready\n", self._node_header)
            return text_response(
                503,
                "draining: not accepting sessions\n",
                (("Retry-After", "5"), *self._node_header),
            )
        if routed.route is Route.METRICS:
            if not self._may_read_metrics(request):
                return text_response(
                    401,
                    "/metrics needs Authorization: Bearer <metrics token>\n",
                    (("WWW-Authenticate", 'Bearer realm="trio-agent metrics"'),),
                )
            accept = (request.header(b"accept") or b"").decode("latin-1")
            body, content_type = self.metrics.render(
                accept, now=self._clock(), max_age_s=self._metrics_cache_s
            )
            return HttpResponse(
                200, (("Content-Type", content_type), ("Cache-Control", "no-store")), body
            )
        if routed.route is Route.ASYNCAPI:
            # Any origin may read the contract (AsyncAPI Studio, a code generator's page).
            return self._send(
                request, self._asyncapi_asset(), (("Access-Control-Allow-Origin", "*"),)
            )
        if routed.route is Route.UPGRADE_REQUIRED:
            return text_response(
                426,
                f"{self.websocket_path} speaks WebSocket only (see docs/protocol.md)\n",
                (("Upgrade", "websocket"),),
            )
        if routed.route is Route.PAGE:
            return self._file(request, PAGE_ASSET, (("Content-Security-Policy", PAGE_POLICY),))
        assert routed.route is Route.STATIC
        assert routed.asset is not None
        # The module is meant to be imported by pages of any origin, and module
        # scripts are fetched in CORS mode.
        return self._file(request, routed.asset, (("Access-Control-Allow-Origin", "*"),))

    def _may_read_metrics(self, request: HttpRequest) -> bool:
        """Whether ``request`` shows the metrics token (always, when there is none).

        As with the session token, every credential presented must be right, and
        each is compared in constant time."""
        if self._metrics_token is None:
            return True
        presented = []
        for key, value in request.headers:
            if key == b"authorization":
                scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
                presented.append(credentials.strip() if scheme.lower() == "bearer" else "")
        matches = [same_secret(token, self._metrics_token) for token in presented]
        return bool(matches) and all(matches)

    def _asyncapi_asset(self) -> Asset:
        """The protocol's AsyncAPI document for this server's WebSocket path, made once."""
        if self._asyncapi is None:
            body = asyncapi_json(self.websocket_path).encode("utf-8")
            self._asyncapi = make_asset(ASYNCAPI_NAME, body)
        return self._asyncapi

    def _file(self, request: HttpRequest, name: str, extra: Headers) -> HttpResponse:
        asset = self._assets.get(name)
        if asset is None:
            return text_response(404, "not found\n")
        return self._send(request, asset, extra)

    @staticmethod
    def _send(request: HttpRequest, asset: Asset, extra: Headers) -> HttpResponse:
        headers: list[tuple[str, str]] = [("ETag", asset.etag), ("Cache-Control", "no-cache")]
        if asset.last_modified is not None:
            headers.append(("Last-Modified", formatdate(asset.last_modified, usegmt=True)))
        headers.extend(extra)
        if is_not_modified(request, asset):
            return HttpResponse(304, headers)
        return HttpResponse(200, [("Content-Type", asset.content_type), *headers], asset.body)
