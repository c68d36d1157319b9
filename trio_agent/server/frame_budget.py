"""A per-connection budget of WebSocket frames, counted below the message layer.

:class:`FrameBudgetStream` sits under trio-websocket and counts every frame header
it reads (continuations and pings included, which never reach the session's rate
limit), and the size of each message in bytes. Past the budget or the size it
closes the connection itself (1008, 1009) and the rest is never parsed.
``docs/security.md`` ("Frame budget", "Sizes") explains why and gives the numbers.
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

    def send_now(self, data: memoryview) -> int:
        """Write what the stream under it takes of ``data`` at once (its ``send_now``);
        ``0`` while the close frame is being written or when it has no ``send_now``.

        Not a checkpoint. Raises :class:`trio.BrokenResourceError` once a close
        frame went out, as :meth:`send_all` does.
        """
        if self.exceeded:
            raise trio.BrokenResourceError("closed: the client went over a limit")
        send_now = getattr(self.inner, "send_now", None)
        if send_now is None or self._send_lock.locked():
            return 0
        return int(send_now(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return repr(self.inner)
