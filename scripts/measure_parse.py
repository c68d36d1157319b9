"""Measure what parsing a hostile frame costs, and how big its ERROR can get.

    .venv/bin/python scripts/measure_parse.py

Two figures quoted in docs/security.md ("What a frame can make the server keep or
echo"): the time ``parse_client_message`` takes on 1 MB frames of many small
elements, with and without a surrogate-pair escape (the shape that made an older
lone-surrogate check walk every element in Python), and the largest ERROR the
parser lets a client elicit from frames of 1 to 6 MB. A measurement, not a test:
the times depend on the machine.
"""

from __future__ import annotations

import json
import time

from trio_agent.protocol.messages import (
    ErrorMessage,
    ErrorPayload,
    ProtocolError,
    encode,
    parse_client_message,
)

MB = 1_000_000


def heartbeat(items: str, *, pair_escape: bool) -> str:
    tail = ',"e":"\\ud83d\\ude00"' if pair_escape else ""
    return '{"msg_type":"HEARTBEAT","msg_id":"h","payload":{"x":' + items + tail + "}}"


def best_ms(raw: str, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        parse_client_message(raw)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def error_size(frame: dict[str, object]) -> tuple[int, int]:
    """(frame bytes, ERROR bytes) for a frame the parser refuses."""
    raw = json.dumps(frame, ensure_ascii=False)
    try:
        parse_client_message(raw)
    except ProtocolError as exc:
        error = ErrorMessage(
            msg_id="s99999",
            session_id="6f1c2a9e0b7d4c3a",
            ref=exc.ref,
            request_id=exc.request_id,
            ts=1732540000000,
            payload=ErrorPayload(code=exc.code, message=exc.message),
        )
        return len(raw.encode()), len(encode(error).encode())
    raise AssertionError(f"accepted: {raw[:80]}")


def main() -> None:
    shapes = {
        "numbers": "[" + ",".join(["1"] * (MB // 2 - 40)) + "]",
        "strings": "[" + ",".join(['"a"'] * (MB // 4 - 40)) + "]",
    }
    print("parse_client_message, 1 MB HEARTBEAT, best of 7:")
    for name, items in shapes.items():
        for pair_escape in (False, True):
            raw = heartbeat(items, pair_escape=pair_escape)
            label = "with a surrogate-pair escape" if pair_escape else "without"
            print(f"  {name:8} {label:29} {best_ms(raw):6.1f} ms")

    big = "\U0001f600" * (MB // 4)  # 1 MB of 4-byte characters
    frames: dict[str, dict[str, object]] = {
        "huge ids": {"msg_type": "INTERRUPT", "msg_id": big, "request_id": big},
        "huge msg_type": {"msg_type": big, "msg_id": big, "request_id": big},
        "huge reason": {"msg_type": "INTERRUPT", "msg_id": "i", "payload": {"reason": big}},
        "huge option key": {
            "msg_type": "REQUEST",
            "msg_id": big,
            "request_id": big,
            "payload": {"input": "", "options": {big: 1}},
        },
        "many bad fields": {
            "msg_type": "REQUEST",
            "msg_id": big,
            "request_id": big,
            "session_id": big,
            "ref": big,
            "ts": big,
            "payload": {"input": 1, "timeout_s": big},
        },
    }
    print("the ERROR of a refused frame:")
    worst = 0
    for name, frame in frames.items():
        sent, answered = error_size(frame)
        worst = max(worst, answered)
        print(f"  {name:16} frame {sent:>9,} bytes -> ERROR {answered:,} bytes")
    print(f"largest ERROR: {worst:,} bytes")


if __name__ == "__main__":
    main()
