"""The throughput ceiling: a bare trio-websocket loop sending the same frames.

No models, no lanes, no cancel scopes, no logging: for each REQUEST it sends
``words`` STREAM frames with one ``await ws.send_message(...)`` each, built with a
string template (the same bytes trio-agent sends), then a DONE. It is what
sending costs on Trio + trio-websocket before any design is added, so the
benchmark can say how much of that rate the real server keeps. It serves one
request at a time per connection and ignores INTERRUPT: it is only ever driven by
the throughput workload.

Run: ``python scripts/peers/trio_websocket_ceiling.py --port 8767``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from trio_agent.agents import lorem_deltas

SESSION_ID = "0123456789abcdef"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    ids = 0
    try:
        await ws.send_message(
            json.dumps(
                {"msg_id": "s0", "session_id": SESSION_ID, "msg_type": "SESSION", "payload": {}}
            )
        )
        while True:
            message = json.loads(await ws.get_message())
            if message.get("msg_type") != "REQUEST":
                continue
            rid = json.dumps(message["request_id"])
            count = int(message["payload"]["options"]["words"])
            for seq, word in enumerate(lorem_deltas(count)):
                ids += 1
                await ws.send_message(
                    f'{{"msg_id":"s{ids}","session_id":"{SESSION_ID}","request_id":{rid},'
                    f'"ts":{now_ms()},"msg_type":"STREAM","payload":{{"seq":{seq},'
                    f'"delta":{json.dumps(word)}}}}}'
                )
            ids += 1
            await ws.send_message(
                f'{{"msg_id":"s{ids}","session_id":"{SESSION_ID}","request_id":{rid},'
                f'"ts":{now_ms()},"msg_type":"DONE","payload":{{"status":"completed",'
                f'"interrupted":false,"frames":{count}}}}}'
            )
    except ConnectionClosed:
        pass


async def main(host: str, port: int) -> None:
    await serve_websocket(handler, host, port, ssl_context=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, args.host, args.port)
