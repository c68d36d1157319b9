"""Secrets out of logs: the redacted forms of what a handshake carries.

A client may present the server's token in three places (``docs/security.md``):
the ``Authorization`` header, the ``?token=`` query parameter and the
``trio-agent.token.<TOKEN>`` subprotocol. Anything that logs a request target, a
header or a subprotocol list goes through these functions first, so that no log
line, access log or trace ever holds a secret. They are pure and cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import unquote_plus

from trio_agent.protocol.constants import TOKEN_SUBPROTOCOL_PREFIX

REDACTED: Final = "[redacted]"

#: Headers whose value is a credential, in lower case.
SECRET_HEADERS: Final = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key"}
)
#: Query parameters whose value is shown in the log. Every other value is hidden:
#: a client may put a credential under any name (``?TOKEN=``, ``?api_key=``), and a
#: list of names to hide is always one spelling short.
SAFE_QUERY_PARAMETERS: Final = frozenset({"agent", "voice", "v"})

#: Where a query string splits into parameters (``;`` too: hiding too much is harmless).
_SEPARATORS = re.compile(r"([&;])")


def redact_target(target: str, secrets: Iterable[str] = ()) -> str:
    """The request target as it may be logged.

    Every query value is hidden except those of :data:`SAFE_QUERY_PARAMETERS` (the key
    is decoded before it is compared, so ``?to%6Ben=`` is ``token`` here as it is to
    the server); a parameter without ``=`` is hidden whole, and so is a fragment.
    A path segment or a parameter that holds one of ``secrets`` (the server's own
    tokens), plainly or percent-encoded, is hidden too, whatever its name.
    """
    hidden = [secret for secret in secrets if secret]

    def holds_secret(text: str) -> bool:
        return any(secret in text or secret in unquote_plus(text) for secret in hidden)

    rest, hash_mark, fragment = target.partition("#")
    path, question_mark, query = rest.partition("?")
    shown_path = "/".join(REDACTED if holds_secret(s) else s for s in path.split("/"))
    shown_query = "".join(_redact_parameter(p, holds_secret) for p in _SEPARATORS.split(query))
    return shown_path + question_mark + shown_query + hash_mark + (REDACTED if fragment else "")


def _redact_parameter(parameter: str, holds_secret: Callable[[str], bool]) -> str:
    if parameter in ("", "&", ";"):
        return parameter
    key, equals, _ = parameter.partition("=")
    if not equals or holds_secret(key):
        return REDACTED
    if unquote_plus(key) in SAFE_QUERY_PARAMETERS and not holds_secret(parameter):
        return parameter
    return f"{key}={REDACTED}"


def redact_subprotocols(subprotocols: Iterable[str]) -> list[str]:
    """The offered subprotocols with the token subprotocol's secret hidden."""
    return [
        TOKEN_SUBPROTOCOL_PREFIX + REDACTED if p.startswith(TOKEN_SUBPROTOCOL_PREFIX) else p
        for p in subprotocols
    ]


def redact_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Headers as text, with credentials and token subprotocols hidden."""
    shown = []
    for name, value in headers:
        lower = name.lower()
        text = value.decode("latin-1")
        if lower in SECRET_HEADERS:
            text = REDACTED
        elif lower == b"sec-websocket-protocol":
            text = ", ".join(redact_subprotocols(p.strip() for p in text.split(",")))
        shown.append((name.decode("latin-1"), text))
    return shown
