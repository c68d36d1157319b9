"""`scripts/serve` with one fault: every INTERRUPT_ACK waits before it is written.

For the browser test of an interrupt whose ACK does not come in time: the page must
clear at once anyway, report the timeout, and count the ACK when it comes late.
Only the ACK is held; the writer waits on it like a server whose ACK queues behind
something else, so nothing queued after it overtakes it either.

Usage: ``python tests/ack_holding_server.py HOLD_S [serve flags...]``
"""

from __future__ import annotations

import sys
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from trio_agent import AgentServer
from trio_agent.cli.main import build_parser
from trio_agent.observability.logs import configure_logging
from trio_agent.server.config import config_from
from trio_agent.server.cork import CorkableStream


class HeldAcks:
    """A WebSocket whose INTERRUPT_ACK frames leave ``hold_s`` late."""

    def __init__(self, ws: WebSocketConnection, hold_s: float) -> None:
        self._ws = ws
        self._hold_s = hold_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and '"msg_type":"INTERRUPT_ACK"' in message:
            await trio.sleep(self._hold_s)
        await self._ws.send_message(message)


class AckHoldingServer(AgentServer):
    hold_s = 0.0

    async def serve_connection(
        self, ws: WebSocketConnection, cork: CorkableStream | None = None
    ) -> None:
        held = HeldAcks(ws, self.hold_s)
        # Without the cork the writer sends every frame through send_message, where
        # the ACK is held.
        await super().serve_connection(held, None)  # type: ignore[arg-type]


def main(argv: list[str]) -> None:
    hold_s, flags = float(argv[0]), argv[1:]
    config = config_from(build_parser().parse_args(["serve", *flags]))
    configure_logging(config.log_level, config.log_format)
    server = AckHoldingServer(config)
    server.hold_s = hold_s
    trio.run(server.run)


if __name__ == "__main__":
    main(sys.argv[1:])
