"""Browser origins as ``--allow-origin`` names them: parsed and normalized, purely.

Shared by the settings (which check ``--allow-origin`` when the server starts) and
the admission policy (which compares a handshake's ``Origin`` with them);
``docs/security.md`` explains the rules.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or ``None``
    when ``origin`` is not a URL origin (``null``, garbage)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    shown = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        shown += f":{port}"
    return f"{scheme}://{shown}"


def parse_allowed_origins(spec: str) -> frozenset[str]:
    """Parse ``--allow-origin``: comma-separated origins, ``*`` or ``null``.

    Raises ``ValueError`` for an entry that is not an origin (a path, a bare host).
    """
    allowed = set()
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        if entry in ("*", "null"):
            allowed.add(entry)
            continue
        normalized = normalize_origin(entry)
        if normalized is None:
            raise ValueError(
                f"--allow-origin: {entry!r} is not an origin (expected scheme://host[:port], "
                "'null' or '*')"
            )
        allowed.add(normalized)
    return frozenset(allowed)
