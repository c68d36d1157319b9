"""Open WebSocket sessions from one address until the server refuses; count the answers
(docs/security.md, "Sessions per address").

    .venv/bin/python scripts/sessions_per_address.py [SOURCE_TREE] [HANDSHAKES]

Starts ``python -m trio_agent serve`` from SOURCE_TREE (default: this checkout) with
its defaults on a free port, and sends HANDSHAKES (default 150) handshakes from
127.0.0.1, holding every connection open; prints how many got each status.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter
from pathlib import Path

from metrics_flood import start_server

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else str(ROOT)
    handshakes = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    server, port = start_server(source)
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    held = []
    statuses: Counter[str] = Counter()
    try:
        for _ in range(handshakes):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(request)
            statuses[connection.recv(65536).split(b" ", 2)[1].decode()] += 1
            held.append(connection)
    finally:
        for connection in held:
            connection.close()
        server.terminate()
        server.wait()
    print(f"{handshakes} handshakes from 127.0.0.1: {dict(sorted(statuses.items()))}")


if __name__ == "__main__":
    main()
