"""Who may open a session: the handshake admission policy, as a pure function.

:func:`admit` returns :class:`Accept` or :class:`Refuse` from the facts of one
handshake; the order of its checks is part of the contract (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from trio_agent.protocol.constants import (
    SUBPROTOCOL,
    TOKEN_QUERY_PARAMETER,
    TOKEN_SUBPROTOCOL_PREFIX,
)
from trio_agent.server.origins import (
    IPNetwork,
    host_is_allowed,
    normalize_origin,
    parse_allowed_hosts,
    parse_allowed_origins,
    parse_trusted_proxies,
)

if TYPE_CHECKING:
    from trio_agent.server.config import ServerConfig


@dataclass(frozen=True)
class HandshakeFacts:
    """What a client presented in its opening handshake.

    :param target: the request target, path and query (``/ws?token=...``).
    :param host: the ``Host`` header.
    :param headers: every other header, as (name, value) byte pairs.
    :param subprotocols: the subprotocols offered, in order.
    """

    target: str
    host: str
    headers: Sequence[tuple[bytes, bytes]] = ()
    subprotocols: Sequence[str] = ()

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), decoded as Latin-1."""
        wanted = name.lower().encode("ascii")
        return [value.decode("latin-1") for key, value in self.headers if key.lower() == wanted]


@dataclass(frozen=True)
class AdmissionPolicy:
    """The server's side of the decision.

    :param path: the WebSocket endpoint.
    :param token: the shared secret, or ``None`` when none is required.
    :param allowed_origins: normalized origins that may connect; ``"*"`` in it
        allows any; empty means "a browser Origin must match the Host".
    :param max_sessions: sessions open at once before handshakes get 503.
    :param allowed_hosts: host names a client may address without a token, besides
        IP addresses, ``localhost`` and ``*.localhost`` (``"*"`` in it: any).
    :param max_sessions_per_address: sessions open at once from one client address
        before its handshakes get 503 (0: no limit).
    :param trusted_proxies: the networks of reverse proxies whose ``X-Forwarded-For``
        names the client (see :meth:`client_address`).
    """

    path: str
    token: str | None = None
    allowed_origins: frozenset[str] = frozenset()
    max_sessions: int = 1000
    allowed_hosts: frozenset[str] = frozenset()
    max_sessions_per_address: int = 100
    trusted_proxies: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_config(cls, config: ServerConfig) -> AdmissionPolicy:
        return cls(
            path=config.path,
            token=config.token or None,
            allowed_origins=parse_allowed_origins(config.allow_origin),
            max_sessions=config.max_sessions,
            allowed_hosts=parse_allowed_hosts(config.allow_host),
            max_sessions_per_address=config.max_sessions_per_address,
            trusted_proxies=parse_trusted_proxies(config.trust_forwarded_for),
        )

    def client_address(self, peer: str | None, facts: HandshakeFacts) -> str | None:
        """The address ``max_sessions_per_address`` counts for a handshake from ``peer``.

        ``peer`` is the TCP peer's IP address (``None`` for a stream that has none,
        such as an in-process one: such a client is not counted). Behind a reverse
        proxy every client has the proxy's address, unless the proxy is trusted
        (``--trust-forwarded-for``): then the client is the rightmost entry of
        ``X-Forwarded-For``, the one that proxy appended. Entries to its left were
        sent by the client and prove nothing. A missing or unreadable entry leaves
        the proxy's own address.
        """
        if peer is None or not self.trusted_proxies:
            return peer
        try:
            peer_ip = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if not any(peer_ip in network for network in self.trusted_proxies):
            return peer
        forwarded = ",".join(facts.header("x-forwarded-for")).rpartition(",")[2].strip()
        try:
            return str(ipaddress.ip_address(forwarded))
        except ValueError:
            return peer

    def host_refusal(self, host: str) -> str | None:
        """Why a request addressed to ``host`` (its ``Host`` header) is refused with
        403, or ``None``. The same rule guards the WebSocket and plain HTTP.

        A server without a token trusts whoever can reach it, and DNS rebinding lets
        any web page reach a server on the user's machine under a name of the
        page's own, with an ``Origin`` that matches it. The ``Host`` names that name,
        so only hosts a rebinding cannot forge are let in. With a token, the token is
        the protection and any ``Host`` may connect.
        """
        if self.token is not None or host_is_allowed(host, self.allowed_hosts):
            return None
        return (
            "this Host is not allowed without a token (DNS rebinding protection): "
            "connect by IP address or localhost, or start the server with --allow-host NAME"
        )


@dataclass(frozen=True)
class Accept:
    """Complete the handshake, selecting ``subprotocol`` (``None``: select none)."""

    subprotocol: str | None


@dataclass(frozen=True)
class Refuse:
    """Answer the handshake with HTTP ``status``; no session is created.

    ``reason`` is safe to log and to send: it never contains a secret.
    """

    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def body(self) -> bytes:
        return self.reason.encode("utf-8") + b"\n"


def admit(
    facts: HandshakeFacts,
    policy: AdmissionPolicy,
    *,
    draining: bool,
    sessions: int,
    sessions_from_address: int = 0,
) -> Accept | Refuse:
    """Decide one handshake. ``sessions`` counts the sessions already admitted, and
    ``sessions_from_address`` those of them from this client's address
    (:meth:`AdmissionPolicy.client_address`)."""
    if urlsplit(facts.target).path != policy.path:
        return Refuse(404, "no WebSocket endpoint here")
    host_refusal = policy.host_refusal(facts.host)
    if host_refusal is not None:
        return Refuse(403, host_refusal)
    origin_refusal = _check_origin(facts, policy.allowed_origins)
    if origin_refusal is not None:
        return Refuse(403, origin_refusal)
    if policy.token is not None:
        token_refusal = _check_token(facts, policy.token)
        if token_refusal is not None:
            return Refuse(
                401, token_refusal, ((b"WWW-Authenticate", b'Bearer realm="trio-agent"'),)
            )
    offers_token = any(p.startswith(TOKEN_SUBPROTOCOL_PREFIX) for p in facts.subprotocols)
    if offers_token and SUBPROTOCOL not in facts.subprotocols:
        return Refuse(
            400, f"a token offered as a subprotocol must come with the subprotocol {SUBPROTOCOL}"
        )
    if draining:
        return Refuse(503, "server is shutting down")
    if sessions >= policy.max_sessions:
        return Refuse(503, f"server is full ({policy.max_sessions} sessions)")
    per_address = policy.max_sessions_per_address
    if per_address and sessions_from_address >= per_address:
        return Refuse(503, f"too many sessions from your address ({per_address})")
    return Accept(SUBPROTOCOL if SUBPROTOCOL in facts.subprotocols else None)


# --------------------------------------------------------------------------- token


def presented_tokens(facts: HandshakeFacts) -> list[str]:
    """Every token the client presented: ``Authorization: Bearer``, ``?token=``, subprotocol."""
    tokens = bearer_tokens(facts)
    query = urlsplit(facts.target).query
    tokens += [v for k, v in parse_qsl(query, keep_blank_values=True) if k == TOKEN_QUERY_PARAMETER]
    tokens += [
        p.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)
        for p in facts.subprotocols
        if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)
    ]
    return tokens


def same_secret(presented: str, expected: str) -> bool:
    """Whether ``presented`` is ``expected``, in a time that tells neither."""
    return hmac.compare_digest(_digest(presented), _digest(expected))


def bearer_tokens(facts: HandshakeFacts) -> list[str]:
    """The credentials of every ``Authorization: Bearer`` header."""
    tokens = []
    for value in facts.header("authorization"):
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            tokens.append(credentials.strip())
    return tokens


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of
    # the length of the secret as well as of its content.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _check_token(facts: HandshakeFacts, token: str) -> str | None:
    presented = presented_tokens(facts)
    if not presented:
        return "a token is required (Authorization: Bearer, ?token= or a subprotocol)"
    expected = _digest(token)
    # Every presented token must be right: a client that sends two different
    # credentials is confused or probing, and either way is not let in. All are
    # compared, so the time taken does not say which one was wrong.
    matches = [hmac.compare_digest(_digest(candidate), expected) for candidate in presented]
    if not all(matches):
        return "wrong token"
    return None


# --------------------------------------------------------------------------- origin


def _same_host(origin: str, host: str) -> bool:
    """Whether a normalized ``origin`` names the ``Host`` the client connected to."""
    scheme = origin.partition("://")[0]
    expected = normalize_origin(f"{scheme}://{host}")
    return expected is not None and expected == origin


def _check_origin(facts: HandshakeFacts, allowed: frozenset[str]) -> str | None:
    origins = facts.header("origin")
    if not origins:
        return None  # not a browser: Origin is a browser's statement, others do not send it
    if len(origins) > 1:
        return "more than one Origin header"
    if "*" in allowed:
        return None
    origin = origins[0].strip()
    normalized = normalize_origin(origin) or origin.lower()
    # An explicit list is exhaustive; without one, only the server's own origin.
    ok = normalized in allowed if allowed else _same_host(normalized, facts.host)
    return None if ok else "this origin may not connect"
