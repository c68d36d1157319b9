"""The files the server hands to browsers, read once and kept in memory.

No file access while serving, strong ``ETag`` and ``Last-Modified`` validators;
restart the server to serve an edited file (docs/web.md).
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from types import MappingProxyType

#: Content types by suffix. A table rather than :mod:`mimetypes`, whose answers
#: depend on the host (some systems map ``.js`` to ``text/plain``, and browsers
#: refuse to run a module served that way).
CONTENT_TYPES: Mapping[str, str] = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"

#: The folder (under ``static/``) that belongs to the demo page, left out by ``--no-web``.
DEMO_FOLDER = "demo/"


@dataclass(frozen=True)
class Asset:
    """One file, ready to send."""

    name: str
    body: bytes
    content_type: str
    etag: str
    #: Seconds since the epoch, or ``None`` when the file has no modification time
    #: (a package imported from a zip archive).
    last_modified: float | None


def content_type_for(name: str) -> str:
    return CONTENT_TYPES.get(pathlib.PurePosixPath(name).suffix.lower(), DEFAULT_CONTENT_TYPE)


def make_asset(name: str, body: bytes, last_modified: float | None = None) -> Asset:
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Asset(name, body, content_type_for(name), f'"{digest}"', last_modified)


def _walk(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith((".", "__")):
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif entry.is_file():
            yield f"{prefix}{entry.name}", entry


@functools.cache
def load_assets(*, demo: bool = True) -> Mapping[str, Asset]:
    """Every file under ``static/`` by its name there (``"demo/index.html"``).

    ``demo=False`` leaves the demo page's folder out. Cached: each process reads
    the files once.
    """
    table: dict[str, Asset] = {}
    for name, entry in _walk(files("trio_agent.server.web") / "static"):
        if not demo and name.startswith(DEMO_FOLDER):
            continue
        mtime = entry.stat().st_mtime if isinstance(entry, pathlib.Path) else None
        table[name] = make_asset(name, entry.read_bytes(), mtime)
    return MappingProxyType(table)
