"""``shielded_cleanup``: the one shield an agent should need, bounded and traced.

``docs/cancellation.md`` explains why every shield must have a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from trio_agent.observability.trace import current_request_trace


@contextmanager
def shielded_cleanup(timeout_s: float, what: str = "agent cleanup") -> Iterator[trio.CancelScope]:
    """Cleanup that an interrupt cannot cut short, and that cannot run forever.

    Exactly ``trio.move_on_after(timeout_s, shield=True)``: inside it, the
    cancellation that is ending your request is held back, so you can ``await``
    (close an upstream stream, save a partial answer); after ``timeout_s`` the
    block is cancelled anyway and execution continues after it. Use it in an
    ``except trio.Cancelled:`` or ``finally:`` block, and let ``Cancelled`` go on
    afterwards. With tracing on it also records ``cleanup_started`` and
    ``cleanup_ended`` on the request's lane::

        try:
            async for token in upstream:
                await stream.send(token)
        finally:
            with shielded_cleanup(1.0, "close upstream"):
                await upstream.aclose()
    """
    found = current_request_trace()
    with trio.move_on_after(timeout_s, shield=True) as scope:
        if found is not None:
            found[0].cleanup_started(what, timeout_s, found[1])
        yield scope
    if found is not None:
        found[0].cleanup_ended(what, scope.cancelled_caught, found[1])
