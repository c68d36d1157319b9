"""The resume book: which sessions may be resumed, with which token, until when.

Pure (no I/O, no Trio; the clock is passed in). A session that offers resumption
gets a token: at least 128 bits from :func:`secrets.token_urlsafe`, kept only as
its SHA-256 digest and compared in constant time (:func:`hmac.compare_digest`).
The token is spent by the RESUME that presents it and a new one is drawn, so of
two connections racing with the same token exactly one wins: the first
:meth:`ResumeBook.redeem` to run, and the server handles a RESUME without an
``await`` between reading it and redeeming it. The state here is a few strings
and numbers per session, so that it could live in a shared store.

:class:`AckLedger` remembers the INTERRUPTs whose ACK went to a connection that
then dropped: the server cannot know the ACK arrived, so RESUMED lists them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Final

__all__ = [
    "TOKEN_BYTES",
    "AckLedger",
    "Redeemed",
    "ResumeBook",
    "new_token",
    "token_digest",
]

#: Random bytes in a token: 192 bits, 32 URL-safe characters.
TOKEN_BYTES: Final = 24
#: Wrong tokens one session accepts before every RESUME of it is denied.
MAX_DENIED_PER_SESSION: Final = 8


def new_token() -> str:
    """A fresh resume token: URL-safe base64 of :data:`TOKEN_BYTES` random bytes."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token: what the cluster's store keeps instead of it."""
    return _digest(token).hex()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Redeemed(Enum):
    """What a RESUME's token is worth."""

    #: The session is held and the token was its current one: it is spent now.
    OK = "ok"
    #: No such session here, or its window has passed (``RESUME_UNKNOWN``).
    UNKNOWN = "unknown"
    #: A wrong or already spent token, or too many of them (``RESUME_DENIED``).
    DENIED = "denied"


@dataclass(slots=True)
class _Entry:
    digest: bytes
    #: When the window of a detached session ends; ``None`` while a connection is attached.
    deadline: float | None = None
    denied: int = 0


class ResumeBook:
    """The resumable sessions of one server."""

    def __init__(self, *, max_denied: int = MAX_DENIED_PER_SESSION) -> None:
        self._entries: dict[str, _Entry] = {}
        self._max_denied = max_denied

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def open(self, session_id: str, token: str | None = None) -> str:
        """Hold ``session_id`` (attached) and return its token: ``token`` (a session
        taken over from another node keeps the one the store issued), or a new one."""
        token = token if token is not None else new_token()
        self._entries[session_id] = _Entry(_digest(token))
        return token

    def reissued(self, session_id: str, token: str) -> None:
        """The store redeemed a RESUME of this session (cluster mode): ``token`` is its
        current token now, and the session is attached again."""
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.digest = _digest(token)
            entry.deadline = None

    def detached(self, session_id: str, *, deadline: float) -> None:
        """Its connection dropped: it may be resumed until ``deadline``."""
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.deadline = deadline

    def digest(self, session_id: str) -> str | None:
        """The hex SHA-256 of the session's current token (what a cluster's store keeps)."""
        entry = self._entries.get(session_id)
        return entry.digest.hex() if entry is not None else None

    def deadline(self, session_id: str) -> float | None:
        entry = self._entries.get(session_id)
        return entry.deadline if entry is not None else None

    def redeem(self, session_id: str, token: str, *, now: float) -> tuple[Redeemed, str | None]:
        """Check a RESUME's token; on success spend it and return the next one.

        The session counts as attached again from here (no deadline). The
        comparison takes the same time whatever the token, and a session past
        ``max_denied`` wrong tokens denies every RESUME (a brute force is bounded,
        though 192 bits leave it nothing to find).
        """
        entry = self._entries.get(session_id)
        if entry is None or (entry.deadline is not None and now >= entry.deadline):
            return Redeemed.UNKNOWN, None
        matches = hmac.compare_digest(entry.digest, _digest(token))
        if not matches or entry.denied >= self._max_denied:
            entry.denied += 1
            return Redeemed.DENIED, None
        token = new_token()
        entry.digest = _digest(token)
        entry.deadline = None
        return Redeemed.OK, token

    def close(self, session_id: str) -> None:
        """The session has ended: it can no longer be resumed."""
        self._entries.pop(session_id, None)


class AckLedger:
    """The INTERRUPTs a session acknowledged on connections that may have lost the ACK.

    :param limit: the most INTERRUPTs remembered (the oldest are forgotten).
    """

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._on_connection: OrderedDict[str, list[str]] = OrderedDict()
        self._unconfirmed: OrderedDict[str, list[str]] = OrderedDict()

    def acknowledged(self, msg_id: str, cut: list[str]) -> None:
        """An ACK of INTERRUPT ``msg_id`` (which cut ``cut``) was written, or was waiting to be."""
        self._remember(self._on_connection, msg_id, cut)

    def connection_dropped(self) -> None:
        """The connection those ACKs went to dropped: none of them is known to have arrived."""
        for msg_id, cut in self._on_connection.items():
            self._remember(self._unconfirmed, msg_id, cut)
        self._on_connection.clear()

    def take_unconfirmed(self) -> dict[str, list[str]]:
        """What RESUMED.payload.interrupts reports (once: the new connection has it)."""
        taken = dict(self._unconfirmed)
        self._unconfirmed.clear()
        return taken

    def _remember(self, into: OrderedDict[str, list[str]], msg_id: str, cut: list[str]) -> None:
        into[msg_id] = list(cut)
        into.move_to_end(msg_id)
        while len(into) > self._limit:
            into.popitem(last=False)
