"""Secrets out of logs: the redacted forms of what a handshake carries.

A client may present the server's token in three places (``docs/security.md``):
the ``Authorization`` header, the ``?token=`` query parameter and the
``trio-agent.token.<TOKEN>`` subprotocol. Anything that logs a request target, a
header or a subprotocol list goes through these functions first, so that no log
line, access log or trace ever holds a secret. They are pure and cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_plus

from trio_agent.protocol.constants import TOKEN_QUERY_PARAMETER, TOKEN_SUBPROTOCOL_PREFIX

REDACTED: Final = "[redacted]"

#: Headers whose value is a credential, in lower case.
SECRET_HEADERS: Final = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key"}
)
#: Query parameters whose value is a credential.
SECRET_QUERY_PARAMETERS: Final = frozenset({TOKEN_QUERY_PARAMETER, "access_token"})


#: ``key=value`` after any separator a query (or a fragment, or a path parameter)
#: may use: hiding too much is harmless, hiding too little is not.
_PARAMETER = re.compile(r"(?P<start>[?&#;])(?P<key>[^=&#;]*)=(?P<value>[^&#;]*)")


def redact_target(target: str) -> str:
    """The request target with the value of every secret parameter hidden.

    The key is decoded before it is compared (``?to%6Ben=...`` is ``token`` to the
    server too), and everything else is left exactly as the client sent it.
    """

    def hide(match: re.Match[str]) -> str:
        if unquote_plus(match["key"]) in SECRET_QUERY_PARAMETERS:
            return f"{match['start']}{match['key']}={REDACTED}"
        return match[0]

    return _PARAMETER.sub(hide, target)


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
