"""The bytes under a WebSocket: a stream wrapper that will not be held hostage, and TLS.

:class:`GuardedStream` bounds a peer that stops reading, aborts a connection left
with half a frame, and notices a peer that leaves mid-handshake (docs/security.md).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import ssl
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import trio
from loguru import logger

from trio_agent.server.startup import StartupError

if TYPE_CHECKING:
    from trio_agent.server.config import ServerConfig

#: The unit of progress of a write: each piece of at most this many bytes must be
#: accepted by the kernel within ``send_timeout_s``.
PROGRESS_CHUNK: Final = 16 * 1024


class SendStalled(trio.BrokenResourceError):
    """A write made no progress for ``send_timeout_s``: the peer does not read."""


class GuardedStream(trio.abc.Stream):
    """A :class:`trio.abc.Stream` with a write-progress deadline and an abortive close.

    :param stream: the accepted connection (a ``SocketStream`` or ``SSLStream``).
    :param send_timeout_s: how long one piece of a write may wait for the peer to
        make room; ``None`` or ``0`` waits forever.
    """

    def __init__(self, stream: trio.abc.Stream, *, send_timeout_s: float | None) -> None:
        self.stream = stream
        self.send_timeout_s = send_timeout_s or math.inf
        #: True once a write stalled for ``send_timeout_s``.
        self.stalled = False
        #: True once a write did not complete: nothing more can be written.
        self.broken = False
        #: True once the peer closed its side or the connection broke.
        self.peer_gone = False
        self._sending = False
        self._watched: trio.CancelScope | None = None

    # -- writing ------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``, each :data:`PROGRESS_CHUNK` within ``send_timeout_s``.

        Raises :class:`SendStalled` when a piece makes no progress in time, and
        :class:`trio.BrokenResourceError` when an earlier write did not complete.
        """
        if self.broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("an earlier write did not complete")
        view = memoryview(data)
        # The common case first: the kernel takes the whole write at once. Then no
        # deadline is needed, and none is armed (a cancel scope per write is a
        # real share of a busy server's CPU). A checkpoint all the same, as
        # SocketStream.send_all is: cancellation is checked before the write, and
        # the schedule point after it is shielded because the write is complete.
        await trio.lowlevel.checkpoint_if_cancelled()
        sent = self._send_now(view)
        if sent == len(view) and sent:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        view = view[sent:]
        completed = False
        self._sending = True
        try:
            for start in range(0, max(len(view), 1), PROGRESS_CHUNK):
                with trio.move_on_after(self.send_timeout_s) as progress:
                    await self.stream.send_all(view[start : start + PROGRESS_CHUNK])
                if progress.cancelled_caught:
                    self.stalled = True
                    logger.warning(
                        "client stopped reading; aborting the connection",
                        send_timeout_s=self.send_timeout_s,
                    )
                    raise SendStalled(f"no write progress for {self.send_timeout_s:g} s")
            completed = True
        finally:
            self._sending = False
            if not completed:
                self.broken = True

    def send_now(self, data: memoryview) -> int:
        """Write what the kernel takes of ``data`` at once; return how many bytes that
        was (see :meth:`_send_now`). For the writer's direct write
        (:meth:`trio_agent.server.cork.CorkableStream.write_now`).

        Not a checkpoint and never blocks, so it cannot be cancelled halfway: the
        bytes it reports are on the socket, the rest is the caller's to keep.
        Raises :class:`trio.BrokenResourceError` when an earlier write did not
        complete or the socket is broken (then marked broken, as ``send_all`` does).
        """
        if self.broken:
            raise trio.BrokenResourceError("an earlier write did not complete")
        return self._send_now(data)

    def _send_now(self, view: memoryview) -> int:
        """Write what the kernel takes without waiting, on a plain TCP connection;
        return how many bytes that was (0 for TLS, a full buffer, a closed stream).

        ``os.write`` on a socket is a ``send`` without flags, as SocketStream
        makes it; the socket is non-blocking, as Trio keeps it. Not while another
        write waits in the full path: its bytes must not be cut into, and the
        second write fails with SocketStream's BusyResourceError instead.
        """
        if not view or self._sending or not isinstance(self.stream, trio.SocketStream):
            return 0
        fd = self.stream.socket.fileno()
        if fd < 0:
            return 0  # closed: the full path raises ClosedResourceError
        try:
            return os.write(fd, view)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self.broken = True
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    # -- reading ------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._peer_left()
            raise
        if not data:
            self._peer_left()
        return data

    @contextmanager
    def cancel_if_peer_leaves(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that is cancelled as soon as the peer closes its side, the
        connection breaks or the stream is closed (at once if that already happened)."""
        with trio.CancelScope() as scope:
            self._watched = scope
            if self.peer_gone:
                scope.cancel(reason="the peer left")
            try:
                yield scope
            finally:
                self._watched = None

    def _peer_left(self) -> None:
        self.peer_gone = True
        if self._watched is not None:
            self._watched.cancel(reason="the peer left")

    # -- closing ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close politely, or abort when a write did not complete (or is under way)."""
        self._peer_left()
        if self.broken or self._sending:
            await abort(self.stream)
        else:
            await self.stream.aclose()

    def __repr__(self) -> str:
        sock = _socket_of(self.stream)
        if sock is None:
            return f"GuardedStream({self.stream!r})"
        try:
            host, port, *_ = sock.getpeername()
        except OSError:
            return "GuardedStream(closed)"
        return f"{host}:{port}"


class _HalfCloseableGuardedStream(GuardedStream, trio.abc.HalfCloseableStream):
    """A :class:`GuardedStream` over a stream that can half-close (plain TCP)."""

    async def send_eof(self) -> None:
        assert isinstance(self.stream, trio.abc.HalfCloseableStream)
        await self.stream.send_eof()


def guard(stream: trio.abc.Stream, *, send_timeout_s: float | None) -> GuardedStream:
    """Wrap ``stream`` in a :class:`GuardedStream` that can half-close when ``stream``
    can (so that an HTTP front end may still signal the end of its response)."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        return _HalfCloseableGuardedStream(stream, send_timeout_s=send_timeout_s)
    return GuardedStream(stream, send_timeout_s=send_timeout_s)


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    while not isinstance(stream, trio.SocketStream):
        inner = getattr(stream, "transport_stream", None)
        if not isinstance(inner, trio.abc.Stream):
            return None
        stream = inner
    return stream.socket


async def abort(stream: trio.abc.Stream) -> None:
    """Close ``stream`` at once, resetting its TCP connection (``SO_LINGER`` 0).

    The kernel discards what is still unsent and answers the peer with RST. Never
    blocks: the close is forceful (see :func:`trio.aclose_forcefully`).
    """
    sock = _socket_of(stream)
    if sock is not None:
        # OSError: already closed, nothing left to reset.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


Listener = trio.abc.Listener[trio.abc.Stream]


#: Set to 1 in the environment of a worker process (``serve --workers N`` sets it):
#: its listener then shares the port with the other workers (Linux ``SO_REUSEPORT``;
#: the kernel spreads new connections over them).
REUSE_PORT_VARIABLE: Final = "TRIO_AGENT_REUSE_PORT"


async def open_listeners(
    config: ServerConfig, context: ssl.SSLContext | None, *, reuse_port: bool = False
) -> list[Listener]:
    """Listen on ``config.host:config.port``: plain TCP, or TLS with ``context``.

    ``reuse_port``: set ``SO_REUSEPORT`` before binding, so that several processes
    (the workers of ``serve --workers N``) listen on the same port. Raises
    :class:`StartupError` when the address cannot be had (a port in use, a host
    that is not this machine's, a port below 1024 without the right).
    """
    try:
        if reuse_port:
            tcp = await _open_reuse_port_listeners(config.host, config.port)
            if context is None:
                return list(tcp)
            return [trio.SSLListener(t, context, https_compatible=True) for t in tcp]
        if context is None:
            return list(await trio.open_tcp_listeners(config.port, host=config.host))
        # https_compatible: a peer may close without TLS close_notify, as browsers do;
        # the WebSocket close handshake says where the data ends.
        return list(
            await trio.open_ssl_over_tcp_listeners(
                config.port, context, host=config.host, https_compatible=True
            )
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {config.port} is in use; choose another with --port") from exc
        raise StartupError(
            f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); "
            "choose another --host or --port"
        ) from exc


async def _open_reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """What :func:`trio.open_tcp_listeners` opens, with ``SO_REUSEPORT`` set on each socket."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("SO_REUSEPORT is not available here: --workers needs Linux (or a BSD)")
    addresses = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def listening_port(listener: Listener) -> int:
    """The TCP port a (TLS over) TCP listener is bound to."""
    while isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    assert isinstance(listener, trio.SocketListener)
    port: int = listener.socket.getsockname()[1]
    return port


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A TLS server context for ``wss://``: the certificate chain and its key.

    Raises :class:`StartupError` (a ``ValueError``) naming the files when they
    cannot be read or do not hold a certificate and its key.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        files = f"{certfile!r}" + (f" and {keyfile!r}" if keyfile else "")
        raise StartupError(f"cannot load the TLS certificate from {files}: {exc}") from exc
    return context


def peer_address(stream: trio.abc.Stream) -> str | None:
    """The IP address of the peer of a TCP (or TLS over TCP) stream, else ``None``."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return None
    try:
        address = stream.socket.getpeername()
    except OSError:
        return None  # already gone
    return str(address[0]) if isinstance(address, tuple) else None
