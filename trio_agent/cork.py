"""A byte stream with a cork: several WebSocket frames leave in one socket write.

trio-websocket sends every message with its own ``send_all``, so every STREAM
frame costs a ``send()`` system call; on loopback that call (which also runs the
receiving side of TCP) is a fifth of the server's CPU per frame. The session's
writer knows better: when the lanes hold more frames, it can hand them all to the
socket at once. :class:`CorkableStream` sits between trio-websocket and the TCP
stream and lets it do that with trio-websocket's public API only::

    stream.cork()                     # the writer task holds the cork
    await ws.send_message(a)          # framed by trio-websocket, kept here
    await ws.send_message(b)
    await stream.flush()              # one send_all for both; the cork is released

Only the task that holds the cork has its sends kept. A send from any other task
(trio-websocket answering a ping or a close, the session closing the connection)
first sends whatever is kept and then its own bytes, under the same lock, so the
bytes on the wire are always in the order the calls were made, and nothing waits
for the writer.

A send kept under the cork is a cancellation point but not a schedule point: it
does no I/O, and the writer's next ``send_message`` schedules anyway (in
trio-websocket's lock).
"""

from __future__ import annotations

import trio


class CorkableStream(trio.abc.Stream):
    """Wraps ``inner``; see the module docstring."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self._holder: trio.lowlevel.Task | None = None
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._send_lock = trio.StrictFIFOLock()

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

    def cork(self) -> None:
        """Keep what the calling task sends until it calls :meth:`flush`."""
        self._holder = trio.lowlevel.current_task()

    async def flush(self) -> None:
        """Release the cork and send what was kept, in one ``send_all``.

        Cancellation: as the inner stream's ``send_all``; the bytes are gone from
        here either way, so a cancelled flush leaves the connection broken, just as
        a cancelled ``send_all`` does.
        """
        self._holder = None
        await self._locked_send(b"")

    async def _send_kept(self, data: bytes | bytearray | memoryview) -> None:
        if self._kept:
            self._kept.append(bytes(data))
            data = b"".join(self._kept)
            self._kept.clear()
            self._kept_bytes = 0
        if data:
            await self.inner.send_all(data)
        else:
            await trio.lowlevel.checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._holder is not None and self._holder is trio.lowlevel.current_task():
            await trio.lowlevel.checkpoint_if_cancelled()
            self._kept.append(bytes(data))
            self._kept_bytes += len(data)
            return
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
