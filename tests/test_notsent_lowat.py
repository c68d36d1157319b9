"""``tcp_notsent_lowat`` reaches the accepted TCP socket (Linux)."""

from __future__ import annotations

import socket
import sys

import pytest
import trio

from trio_agent import AgentServer, ServerConfig

TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_NOTSENT_LOWAT is Linux-only")
@pytest.mark.parametrize("lowat", [0, 16384])
async def test_the_option_is_set_on_accepted_tcp_streams(lowat):
    server = AgentServer(ServerConfig(port=0, tcp_notsent_lowat=lowat))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], await trio.open_tcp_stream("127.0.0.1", port):
        accepted = await listeners[0].accept()
        async with accepted:
            default = accepted.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
            server._bound_unsent_data(accepted)
            value = accepted.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
            assert value == (lowat or default)
