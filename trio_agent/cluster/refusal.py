"""The ERROR a node of a cluster answers a RESUME it refuses, then the close.

What the client is told depends on the verdict (a wrong or spent token, or no such
session) and on the node's state (the store unreachable, a drain under way), so
that the client knows whether to start over or to try another node.
"""

from __future__ import annotations

import secrets

from trio_websocket import WebSocketConnection

from trio_agent.protocol.messages import ErrorCode, ResumeMessage
from trio_agent.server.resume_book import Redeemed
from trio_agent.server.resumption import refuse_resume

__all__ = ["refuse_in_cluster"]


async def refuse_in_cluster(
    ws: WebSocketConnection,
    message: ResumeMessage,
    verdict: Redeemed,
    *,
    node_id: str,
    problem: str | None,
    draining: bool,
) -> None:
    """Send ``RESUME_DENIED`` (``verdict`` DENIED) or ``RESUME_UNKNOWN`` saying why,
    then close (:func:`~trio_agent.server.resumption.refuse_resume`, which bounds it).

    Cancellation: as :func:`~trio_agent.server.resumption.refuse_resume`.
    """
    if verdict is Redeemed.DENIED:
        code, text = ErrorCode.RESUME_DENIED, "wrong or already used resume token"
    else:
        code, text = (
            ErrorCode.RESUME_UNKNOWN,
            "no session to resume in this cluster (unknown, or its window has passed)"
            + (f"; {problem}" if problem else "")
            + ("; this node is draining, resume on another" if draining else "")
            + ": start over",
        )
    await refuse_resume(
        ws,
        session_id=message.session_id,
        msg_id=f"{node_id[:16]}-r{secrets.token_hex(3)}",
        ref=message.msg_id,
        code=code,
        text=text,
    )
