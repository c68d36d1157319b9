"""A byte stream with a cork: several WebSocket frames leave in one socket write.

:class:`CorkableStream` keeps the writer's frames and flushes them in one
``send_all``, in call order with trio-websocket's own sends (docs/performance.md).
When nothing is kept and nobody sends, :meth:`CorkableStream.write_now` writes a
frame at once, from the calling task, without a schedule point.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class CorkableStream(trio.abc.Stream):
    """Wraps ``inner``; see the module docstring."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._send_lock = trio.StrictFIFOLock()
        #: The stream under it writes without waiting (``send_now``: a plain TCP socket
        #: under :class:`~trio_agent.server.transport.GuardedStream`), or ``None``.
        self._send_now: Callable[[memoryview], int] | None = getattr(inner, "send_now", None)

    def __repr__(self) -> str:
        # trio-websocket shows this as the endpoint of a stream it cannot inspect.
        if isinstance(self.inner, trio.SocketStream):
            host, port, *_ = self.inner.socket.getpeername()
            return f"tcp://{host}:{port}"
        return repr(self.inner)

    @property
    def kept_bytes(self) -> int:
        """Bytes kept under the cork, not yet handed to the inner stream."""
        return self._kept_bytes

    def keep(self, data: bytes) -> None:
        """Keep ``data`` (whole frames) until :meth:`flush` or another task's send.

        Not a checkpoint: it does no I/O. The flush that follows is one.
        """
        self._kept.append(data)
        self._kept_bytes += len(data)

    @property
    def writes_now(self) -> bool:
        """Whether the stream under it can write without waiting at all (plain TCP)."""
        return self._send_now is not None

    @property
    def can_write_now(self) -> bool:
        """Whether :meth:`write_now` may be called: the stream under it can write
        without waiting, nothing is kept, and no send is under way (the lock is
        free, so nobody else is writing and nothing is due ahead of the bytes)."""
        return self._send_now is not None and not self._kept and not self._send_lock.locked()

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` (whole frames) at once, from the calling task; return whether
        all of it went. Call only when :attr:`can_write_now`.

        One non-blocking socket write: not a checkpoint, so it cannot be cancelled
        halfway, and no other task can send in the middle of it. What the kernel
        does not take is kept, ahead of every later send; the caller must then see
        that a :meth:`flush` follows (``False``). An error of the stream (a broken
        connection) keeps all of ``data`` and returns ``False`` too: the flush
        meets the error and raises it, where the writer ends the session.
        """
        send_now = self._send_now
        assert send_now is not None
        try:
            sent = send_now(memoryview(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            sent = 0
        if sent == len(data):
            return True
        self.keep(data[sent:] if sent else data)
        return False

    async def flush(self) -> None:
        """Send what was kept, in one ``send_all`` (a checkpoint even if nothing was).

        Cancellation: a flush cancelled before it writes anything keeps what was
        kept, to go out ahead of the next send (a close frame, say), so frames the
        writer counted as written are not lost; one cancelled once the write has
        begun is the inner stream's cancelled ``send_all``, which leaves the
        connection broken.
        """
        await self._locked_send(b"")

    async def _send_kept(self, data: bytes | bytearray | memoryview) -> None:
        # A cancellation before any I/O leaves what was kept here, for the next
        # send; after this point the inner send_all does no schedule point before
        # its write, so the bytes handed over are written or the stream is broken.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._kept:
            if data:
                self._kept.append(bytes(data))
            data = self._kept[0] if len(self._kept) == 1 else b"".join(self._kept)
            self._kept.clear()
            self._kept_bytes = 0
        if data:
            await self.inner.send_all(data)
        else:
            await trio.lowlevel.checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._locked_send(data)

    async def _locked_send(self, data: bytes | bytearray | memoryview) -> None:
        # Take the lock without a schedule point when it is free (it nearly always
        # is): the send that follows is a full checkpoint anyway.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await self._send_kept(data)
        finally:
            self._send_lock.release()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self._kept.clear()
        self._kept_bytes = 0
        await self.inner.aclose()
