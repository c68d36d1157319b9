"""Structured logging through loguru.

Every line carries ``session_id`` and, inside a request, ``request_id``. The
library installs no sink on import; the command line calls :func:`configure_logging`.
``docs/architecture.md`` explains the design.
"""

from __future__ import annotations

import sys
from typing import Literal

from loguru import logger

#: How log lines are written: coloured text for people, or one JSON object per line.
LogFormat = Literal["text", "json"]

_TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[session_id]}</cyan>{extra[request_tag]} {message}{extra[fields]}"
)


def _patch(record: dict) -> None:  # type: ignore[type-arg]
    extra = record["extra"]
    extra.setdefault("session_id", "-")
    request_id = extra.get("request_id")
    extra["request_tag"] = f" [{request_id}]" if request_id else ""
    shown = {
        k: v
        for k, v in extra.items()
        if k not in {"session_id", "request_id", "request_tag", "fields"}
    }
    extra["fields"] = "".join(f" {k}={v}" for k, v in shown.items())


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send logs to stderr as coloured text or as one JSON object per line."""
    logger.remove()
    # diagnose=False: tracebacks never show the values of local variables, which
    # could hold a request's headers or the server's token.
    if fmt == "json":
        logger.add(sys.stderr, level=level.upper(), serialize=True, enqueue=False, diagnose=False)
    else:
        logger.configure(patcher=_patch)  # type: ignore[arg-type]
        logger.add(
            sys.stderr, level=level.upper(), format=_TEXT_FORMAT, colorize=None, diagnose=False
        )
