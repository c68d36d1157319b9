"""The errors the client raises on purpose, all subclasses of :class:`AgentClientError`.

Which call raises which, and when, is in docs/client.md ("Lifetime, cancellation
and errors").
"""

from __future__ import annotations

import trio
from trio_websocket import CloseReason

from trio_agent.protocol.messages import ErrorMessage

__all__ = [
    "AckTimeout",
    "AgentClientError",
    "ClientClosed",
    "ConnectionFailed",
    "ConnectionLost",
    "HeartbeatTimeout",
    "ProtocolViolation",
    "ServerError",
]


class AgentClientError(Exception):
    """The base of every error this client raises on purpose."""


class ConnectionFailed(AgentClientError):
    """The client could not connect: no server, a refused handshake (``status_code``),
    a timeout, or a first frame that is not SESSION."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ConnectionLost(AgentClientError):
    """The connection ended while the client was using it. ``code`` and ``reason``
    are the WebSocket close code and reason when there was a close frame."""

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason

    @classmethod
    def from_close(cls, close: CloseReason | None) -> ConnectionLost:
        if close is None:
            return cls("the connection was closed")
        why = f": {close.reason}" if close.reason else ""
        return cls(
            f"the server closed the connection ({close.code} {close.name}{why})",
            code=close.code,
            reason=close.reason,
        )


class HeartbeatTimeout(ConnectionLost):
    """The server did not answer a HEARTBEAT in time: it is gone or stuck."""


class ClientClosed(AgentClientError):
    """The client's ``async with`` block has ended (or is ending), so the call cannot
    complete: a reply that never finished, an ACK that never came, a late request."""


class ServerError(AgentClientError):
    """The server refused a REQUEST or an INTERRUPT with an ERROR frame."""

    def __init__(
        self, code: str, message: str, *, ref: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref
        self.request_id = request_id

    @classmethod
    def from_message(cls, error: ErrorMessage) -> ServerError:
        """The ERROR frame ``error`` as an exception."""
        return cls(
            str(error.payload.code),
            error.payload.message,
            ref=error.ref,
            request_id=error.request_id,
        )


class AckTimeout(AgentClientError, trio.TooSlowError):
    """No INTERRUPT_ACK within the time given to :meth:`InterruptHandle.acknowledged`.

    The interrupt still holds locally: the responses it cut stay ended.
    """

    def __init__(self, msg_id: str, timeout: float) -> None:
        super().__init__(f"no INTERRUPT_ACK for {msg_id!r} within {timeout:g} s")
        self.msg_id = msg_id
        self.timeout = timeout


class ProtocolViolation(AgentClientError):
    """The server broke protocol v1.

    ``guarantee`` is the number of the broken guarantee in docs/protocol.md, or
    ``None`` when the frame itself is not a valid protocol v1 server frame;
    ``frame`` is (the start of) the offending frame. In ``strict`` mode the client's
    ``async with`` exits with this exception; otherwise it is logged and kept in
    :attr:`AgentClient.violations`.
    """

    def __init__(self, guarantee: int | None, message: str, frame: str) -> None:
        what = f"guarantee {guarantee}" if guarantee is not None else "protocol v1"
        super().__init__(f"the server broke {what}: {message}")
        self.guarantee = guarantee
        self.message = message
        self.frame = frame
