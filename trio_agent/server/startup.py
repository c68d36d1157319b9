"""What stops the server before it serves: a setting it cannot start with.

Each check runs before the server listens (or as it opens its listeners), so that
the operator hears about a port in use or a file that cannot be written at once,
in one line, rather than from the first client that connects.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["StartupError", "check_trace_file"]


class StartupError(ValueError):
    """A setting the server cannot start with: a port in use, a certificate that
    cannot be read. The message names the setting to change, in one line, which
    is all ``trio-agent serve`` prints (exit status 2)."""


def check_trace_file(path: str) -> None:
    """Raise :class:`StartupError` unless the trace file ``path`` can be appended to.

    The tracer opens it only on the first event, inside a session: a path that
    cannot be written would otherwise break every session's connection. The file
    is created if missing (it is about to be written anyway). Synchronous, not a
    checkpoint: it runs once, as the server is built.
    """
    try:
        with Path(path).open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise StartupError(
            f"cannot write the trace to {path!r} ({exc.strerror or exc}); choose another --trace"
        ) from exc
