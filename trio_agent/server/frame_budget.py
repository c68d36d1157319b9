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

The same count of the bytes gives the size of each message in bytes, as the
frame headers announce it: a message over ``max_message_bytes`` bytes is closed
with 1009 before its payload is passed on (trio-websocket counts a text message in
characters, so a message of 4-byte characters could otherwise take four times the
limit in memory).
"""

from __future__ import annotations

from typing import Final

import trio
from loguru import logger

from trio_agent.protocol.framing import FrameCounter, close_frame
from trio_agent.protocol.messages import CloseCode
from trio_agent.server.ratelimit import TokenBucket

#: How long writing the close frame may wait for a write under way (a client that
#: floods rarely reads); after that the connection is just dropped.
CLOSE_FRAME_TIMEOUT_S: Final = 1.0

#: RFC 6455's close code for a frame that breaks the protocol.
PROTOCOL_ERROR: Final = 1002

#: The reasons carried by the close frames.
OVER_BUDGET: Final = "client exceeded the WebSocket frame rate"
TOO_BIG: Final = "message too big"


class FrameBudgetStream(trio.abc.Stream):
    """Wraps the stream trio-websocket reads from and writes to; see the module docstring.

    :param inner: the upgraded connection, starting with the HTTP upgrade request
        (which is skipped, not counted).
    :param rate_per_s: frames per second the bucket refills (0: frames are not limited).
    :param burst: frames a client may send at once.
    :param max_message_bytes: the largest message, in bytes of payload.
    """

    def __init__(
        self, inner: trio.abc.Stream, *, rate_per_s: float, burst: int, max_message_bytes: int
    ) -> None:
        self.inner = inner
        self.max_message_bytes = max_message_bytes
        self._counter = FrameCounter(after_http_head=True)
        self._bucket = (
            TokenBucket(rate_per_s=rate_per_s, burst=burst, now=trio.current_time())
            if rate_per_s > 0
            else None
        )
        # Writes are whole frames (the cork sends whole batches): the close frame
        # waits for the write under way, so it never lands inside another frame.
        self._send_lock = trio.StrictFIFOLock()
        #: True once the client went over a limit: the close frame is (being) sent.
        self.exceeded = False

    @property
    def frames(self) -> int:
        """Frames the client has sent so far."""
        return self._counter.frames

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Read from ``inner`` and count its frames; past a limit, write the close
        frame and return ``b""`` (end of stream), so trio-websocket never parses the
        rest.

        Cancellation: as ``inner.receive_some``; the close frame's write is bounded
        by :data:`CLOSE_FRAME_TIMEOUT_S`.
        """
        if self.exceeded:
            await trio.lowlevel.checkpoint()
            return b""
        data = await self.inner.receive_some(max_bytes)
        counter = self._counter
        frames = counter.feed(data)
        if counter.malformed is not None:
            # Out of step with wsproto, the count would mean nothing: drop the
            # connection (wsproto would refuse such a frame too).
            logger.info("closing a connection that sent " + counter.malformed)
            if counter.frames:
                await self._close(PROTOCOL_ERROR, "malformed frame")
            else:
                # Still in the handshake: no close frame, and closing the stream
                # ends the handshake's wait at once.
                self.exceeded = True
                await trio.aclose_forcefully(self.inner)
            return b""
        if counter.largest_message > self.max_message_bytes:
            logger.info(
                "closing a connection whose message is too big",
                message_bytes=counter.largest_message,
                max_message_bytes=self.max_message_bytes,
            )
            await self._close(CloseCode.MESSAGE_TOO_BIG, TOO_BIG)
            return b""
        bucket = self._bucket
        if frames and bucket is not None and not bucket.take(trio.current_time(), frames):
            logger.warning(
                "closing a connection that floods WebSocket frames",
                frames=counter.frames,
                rate_per_s=bucket.rate_per_s,
                burst=bucket.burst,
            )
            await self._close(CloseCode.POLICY_VIOLATION, OVER_BUDGET)
            return b""
        return data

    async def _close(self, code: int, reason: str) -> None:
        """Write the close frame (bounded); every write after it is refused."""
        self.exceeded = True
        with trio.move_on_after(CLOSE_FRAME_TIMEOUT_S):
            async with self._send_lock:
                await self.inner.send_all(close_frame(code, reason))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` to ``inner``; refused once a close frame went out.

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
                raise trio.BrokenResourceError("closed: the client went over a limit")
            await self.inner.send_all(data)
        finally:
            self._send_lock.release()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return repr(self.inner)
