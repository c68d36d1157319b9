"""A per-connection budget of WebSocket frames, counted below the message layer.

trio-websocket hands the session whole messages; the frames that make them up
(continuations), and the pings and pongs it answers itself, never reach the
session's rate limit (:mod:`trio_agent.server.ratelimit`). A client could send a
text frame without FIN and then empty continuations forever, or a ping flood, and
burn the server's CPU in wsproto without ever completing a message.

:class:`FrameBudgetStream` sits under trio-websocket, counts every frame header in
the bytes it reads (:class:`~trio_agent.protocol.framing.FrameCounter`) and takes
one token per frame from a token bucket. When the bucket runs dry it writes a
close frame (1008) itself, refuses every later write (nothing may follow a close
frame), and tells trio-websocket the connection is over: the flood is never
parsed. docs/security.md ("Floods") gives the numbers.
"""

from __future__ import annotations

from typing import Final

import trio
from loguru import logger

from trio_agent.protocol.framing import FrameCounter, close_frame
from trio_agent.protocol.messages import CloseCode
from trio_agent.server.ratelimit import TokenBucket

#: How long writing the 1008 close frame may wait for a write under way (a
#: client that floods rarely reads); after that the connection is just dropped.
CLOSE_FRAME_TIMEOUT_S: Final = 1.0

#: The reason carried by the close frame, and logged.
OVER_BUDGET: Final = "client exceeded the WebSocket frame rate"


class FrameBudgetStream(trio.abc.Stream):
    """Wraps the stream trio-websocket reads from and writes to; see the module docstring.

    :param inner: the upgraded connection, starting with the HTTP upgrade request
        (which is skipped, not counted).
    :param rate_per_s: frames per second the bucket refills.
    :param burst: frames a client may send at once.
    """

    def __init__(self, inner: trio.abc.Stream, *, rate_per_s: float, burst: int) -> None:
        self.inner = inner
        self._counter = FrameCounter(after_http_head=True)
        self._bucket = TokenBucket(rate_per_s=rate_per_s, burst=burst, now=trio.current_time())
        # Writes are whole frames (the cork sends whole batches): the close frame
        # waits for the write under way, so it never lands inside another frame.
        self._send_lock = trio.StrictFIFOLock()
        #: True once the client went over its budget: the close frame is (being) sent.
        self.exceeded = False

    @property
    def frames(self) -> int:
        """Frames the client has sent so far."""
        return self._counter.frames

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Read from ``inner`` and count its frames; past the budget, close with 1008
        and return ``b""`` (end of stream), so trio-websocket never parses the flood.

        Cancellation: as ``inner.receive_some``; the close frame's write is bounded
        by :data:`CLOSE_FRAME_TIMEOUT_S`.
        """
        if self.exceeded:
            await trio.lowlevel.checkpoint()
            return b""
        data = await self.inner.receive_some(max_bytes)
        frames = self._counter.feed(data)
        if frames and not self._bucket.take(trio.current_time(), frames):
            await self._close_over_budget()
            return b""
        return data

    async def _close_over_budget(self) -> None:
        self.exceeded = True
        logger.warning(
            "closing a connection that floods WebSocket frames",
            frames=self._counter.frames,
            rate_per_s=self._bucket.rate_per_s,
            burst=self._bucket.burst,
        )
        with trio.move_on_after(CLOSE_FRAME_TIMEOUT_S):
            async with self._send_lock:
                await self.inner.send_all(close_frame(CloseCode.POLICY_VIOLATION, OVER_BUDGET))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` to ``inner``; refused once the close frame went out.

        Takes the lock without a schedule point when it is free (it always is,
        unless the close frame is being written), so, as the cork relies on, no
        schedule point comes before the write.
        """
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self.exceeded:
                raise trio.BrokenResourceError("closed: the client exceeded its frame budget")
            await self.inner.send_all(data)
        finally:
            self._send_lock.release()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return repr(self.inner)


def budget_frames(stream: trio.abc.Stream, *, rate_per_s: float, burst: int) -> trio.abc.Stream:
    """``stream`` under a :class:`FrameBudgetStream`, or as it is when ``rate_per_s`` is 0."""
    if rate_per_s <= 0:
        return stream
    return FrameBudgetStream(stream, rate_per_s=rate_per_s, burst=burst)
