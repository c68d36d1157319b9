"""The client's WebSocket: the stream it dials, the subprotocols it offers, how it
closes, and what to call a failure to connect.

:func:`~trio_agent.client.connection.open_agent_client` uses these; docs/client.md
("Connecting") describes the handshake and lists the failures.
"""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import SplitResult

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
)

from trio_agent.client.errors import ConnectionFailed
from trio_agent.protocol.constants import SUBPROTOCOL, TOKEN_CHARACTERS, TOKEN_SUBPROTOCOL_PREFIX

__all__ = [
    "CLOSE_TIMEOUT_S",
    "check_token",
    "close_websocket",
    "connection_failure",
    "dial",
    "host_header",
    "offered_subprotocols",
]

#: How long closing the WebSocket may take before the client drops the connection.
CLOSE_TIMEOUT_S: Final = 1.0


def check_token(token: str) -> str:
    """Return ``token`` if it can travel in a subprotocol name; raise ``ValueError`` if not."""
    if not token or not set(token) <= TOKEN_CHARACTERS:
        raise ValueError("a token may only contain RFC 7230 token characters (no spaces)")
    return token


def offered_subprotocols(token: str | None) -> list[str]:
    """The subprotocols the handshake offers: ``trio-agent.v1``, and the token as
    ``trio-agent.token.<token>`` when there is one (``ValueError`` for a bad token)."""
    subprotocols = [SUBPROTOCOL]
    if token is not None:
        subprotocols.append(TOKEN_SUBPROTOCOL_PREFIX + check_token(token))
    return subprotocols


async def dial(parts: SplitResult, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    """Open the TCP (or TLS, for ``wss``) stream to the URL's host.

    Cancelling it leaves nothing open: a TLS stream whose handshake did not
    complete is closed before the cancellation goes on.
    """
    assert parts.hostname is not None
    if parts.scheme == "wss":
        stream = await trio.open_ssl_over_tcp_stream(
            parts.hostname,
            parts.port or 443,
            ssl_context=ssl_context or ssl.create_default_context(),
            https_compatible=True,
        )
        try:
            # Now, so that a certificate problem is reported as one, not later as a
            # WebSocket handshake that never completes.
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream
    if ssl_context is not None:
        raise ConnectionFailed("an ssl_context needs a wss:// URL")
    return await trio.open_tcp_stream(parts.hostname, parts.port or 80)


def host_header(parts: SplitResult) -> str:
    """The Host header for the URL: its host and port, without user info."""
    return parts.netloc.rpartition("@")[2] or "localhost"


def connection_failure(error: BaseException, url: str, timeout: float) -> ConnectionFailed:
    """``error``, raised while connecting to ``url``, as the one exception the caller sees."""
    if isinstance(error, ConnectionFailed):
        return error
    if isinstance(error, ConnectionRejected):
        return ConnectionFailed(
            f"{url} refused the WebSocket handshake with HTTP {error.status_code}",
            status_code=error.status_code,
        )
    if isinstance(error, trio.TooSlowError):
        return ConnectionFailed(f"no SESSION from {url} within {timeout:g} s")
    if isinstance(error, ConnectionClosed):
        return ConnectionFailed(f"{url} closed the connection before its SESSION frame")
    if isinstance(error, trio.BrokenResourceError) and error.__cause__ is not None:
        return ConnectionFailed(f"cannot connect to {url}: {error.__cause__}")  # TLS
    if isinstance(error, HandshakeError | OSError):
        return ConnectionFailed(f"cannot connect to {url}: {error}")
    return ConnectionFailed(f"cannot connect to {url}: {error!r}")


async def close_websocket(ws: WebSocketConnection, *, grace: float) -> None:
    """Close ``ws``, waiting at most ``grace`` seconds for the close handshake.

    Shielded, so it also happens when the client is being cancelled. (The stream
    under it is closed by the connection task in any case.)
    """
    with trio.move_on_after(grace, shield=True):
        await ws.aclose()
