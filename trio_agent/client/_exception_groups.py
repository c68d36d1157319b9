"""Unwrapping the exception groups a nursery raises, so the client's callers get
the one exception that matters (docs/client.md, "Lifetime, cancellation and errors")."""

from __future__ import annotations

from typing import NoReturn

import trio

__all__ = ["lone_exception", "raise_unwrapped"]


def lone_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception that is not a :class:`trio.Cancelled` in ``group`` (one level
    deep: a group the body itself raised stays whole), or ``None``."""
    _, rest = group.split(trio.Cancelled)
    if rest is not None and len(rest.exceptions) == 1:
        return rest.exceptions[0]
    return None


def raise_unwrapped(error: BaseException) -> NoReturn:
    """Raise ``error`` without chaining it to the group it came out of (which
    contains it, and would print it twice)."""
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
        del error
