"""Browser origins as ``--allow-origin`` names them, and hosts as ``--allow-host``
names them: parsed and normalized, purely.

Shared by the settings (which check both lists when the server starts), the
admission policy (which compares a handshake's ``Origin`` and ``Host`` with them)
and the HTTP routes (``Host``); ``docs/security.md`` explains the rules.
"""

from __future__ import annotations

import ipaddress
import re
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


# --------------------------------------------------------------------------- hosts

#: What a host name may hold (letters, digits, ``-``, ``_`` and dots), in lower case.
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def host_is_allowed(host: str, allowed: frozenset[str]) -> bool:
    """Whether a ``Host`` header value may reach a server that has no token.

    DNS rebinding needs a *name* the attacker controls, rebound to the server's
    address; so an IP address literal is always allowed, and so are ``localhost``
    and ``*.localhost`` (names that never leave the machine). Any other name must
    be in ``allowed`` (``--allow-host``: exact names, ``.example.com`` for a domain
    and its subdomains, or ``*`` for any). A malformed value is refused.
    """
    if "*" in allowed:
        return True
    parsed = _name_of(host)
    if parsed is None:
        return False
    name, is_address = parsed
    if is_address:
        return True
    name = name.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost") or name in allowed:
        return True
    return any(
        entry.startswith(".") and (name == entry[1:] or name.endswith(entry)) for entry in allowed
    )


def _name_of(host: str) -> tuple[str, bool] | None:
    """``(name, is_an_address)`` of a ``Host`` value without its port, or ``None``."""
    host = host.strip().lower()
    if host.startswith("["):
        literal, _, port = host[1:].partition("]")
        if port and not (port.startswith(":") and port[1:].isdigit()):
            return None
        if "%" in literal:
            return None  # a zone id only means something on the server's own links
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        return literal, True
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None  # also an IPv6 address without brackets, which HTTP does not allow
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return (name, False) if _NAME.fullmatch(name) else None
    return name, True


def parse_allowed_hosts(spec: str) -> frozenset[str]:
    """Parse ``--allow-host``: comma-separated host names (no port), ``.domain`` for a
    domain and its subdomains, or ``*``.

    Raises ``ValueError`` for an entry that is not a host name (a URL, a port, an
    address: addresses are always allowed).
    """
    allowed = set()
    for entry in (e.strip().lower() for e in spec.split(",")):
        if not entry:
            continue
        if entry == "*":
            allowed.add(entry)
            continue
        name = entry.removeprefix(".").removesuffix(".")
        if not _NAME.fullmatch(name) or _name_of(name) != (name, False):
            raise ValueError(
                f"--allow-host: {entry!r} is not a host name (expected a name without a "
                "port, '.domain' for a domain and its subdomains, or '*'; IP addresses are "
                "always allowed)"
            )
        allowed.add(("." if entry.startswith(".") else "") + name)
    return frozenset(allowed)


# --------------------------------------------------------------------------- proxies


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(spec: str) -> tuple[IPNetwork, ...]:
    """Parse ``--trust-forwarded-for``: comma-separated addresses or networks
    (``10.0.0.5``, ``10.0.0.0/24``, ``::1``). Raises ``ValueError`` naming a bad entry."""
    networks: list[IPNetwork] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"--trust-forwarded-for: {entry!r} is not an IP address or network"
            ) from None
    return tuple(networks)
