"""The FastAPI + uvicorn peer speaks the asyncio peer's protocol subset, field for field.

Both peers run as processes (as the benchmark starts them) and get the same
conversation over a real socket: a short request, a request cut by an INTERRUPT,
an INTERRUPT of a request already ended and of one never sent, a HEARTBEAT, text
that is not JSON. Every answer must have the same fields and the same values as
the asyncio peer's, apart from ids, times and how many words went out before the
cut; the FastAPI peer runs on each of uvicorn's WebSocket protocols.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from interrupt_bench.servers import HOST, PATH, SERVERS, RunningServer  # noqa: E402

#: Fields whose values differ by nature between two runs (the shape must not).
VOLATILE = {"msg_id", "session_id", "ts", "frames", "seq", "delta"}


def _started(key: str, folder: Path) -> Iterator[RunningServer]:
    server = RunningServer(SERVERS[key], folder)
    try:
        asyncio.run(server.wait_ready())
        yield server
    finally:
        server.stop()


def _shape(frame: dict[str, Any]) -> dict[str, Any]:
    """A frame with its volatile values replaced by their type's name."""

    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {
                k: type(v).__name__ if k in VOLATILE else strip(v) for k, v in sorted(obj.items())
            }
        return obj

    return strip(frame)  # type: ignore[no-any-return]


def _conversation(ws: ClientConnection) -> list[dict[str, Any]]:
    def send(**frame: Any) -> None:
        ws.send(json.dumps(frame))

    def recv() -> dict[str, Any]:
        return json.loads(ws.recv(timeout=10))  # type: ignore[no-any-return]

    seen = [recv()]  # SESSION
    send(msg_type="REQUEST", msg_id="c1", request_id="r1",
         payload={"input": "x", "options": {"words": 3, "words_per_s": 0}})  # fmt: skip
    seen += [recv() for _ in range(4)]  # three STREAM frames and the DONE
    send(msg_type="REQUEST", msg_id="c2", request_id="r2",
         payload={"input": "x", "options": {"words": 1000, "words_per_s": 50}})  # fmt: skip
    seen.append(recv())  # its first STREAM frame
    send(msg_type="INTERRUPT", msg_id="c3", request_id="r2")
    cut: list[dict[str, Any]] = []
    while len([f for f in cut if f["msg_type"] in ("INTERRUPT_ACK", "DONE")]) < 2:
        frame = recv()
        if frame["msg_type"] != "STREAM":  # frames written before the ACK may come first
            cut.append(frame)
    seen += sorted(cut, key=lambda f: str(f["msg_type"]))
    send(msg_type="INTERRUPT", msg_id="c4", request_id="r2")
    send(msg_type="INTERRUPT", msg_id="c5", request_id="never")
    send(msg_type="HEARTBEAT", msg_id="c6")
    ws.send("not json")
    # INTERRUPTs are answered from tasks of their own: the order of these may vary.
    seen += sorted((recv() for _ in range(4)), key=lambda f: (f["msg_type"], str(f.get("ref"))))
    return [_shape(f) for f in seen]


@pytest.fixture(scope="module")
def asyncio_answers(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    for server in _started("asyncio", tmp_path_factory.mktemp("asyncio")):
        with connect(f"ws://{HOST}:{server.port}{PATH}") as ws:
            return _conversation(ws)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("key", ["fastapi", "fastapi-websockets", "fastapi-wsproto"])
def test_fastapi_peer_answers_as_the_asyncio_peer_does(key, asyncio_answers, tmp_path):
    for server in _started(key, tmp_path):
        with connect(f"ws://{HOST}:{server.port}{PATH}") as ws:
            answers = _conversation(ws)
    # The server's name in SESSION is the only value that may differ.
    assert answers[0]["payload"].pop("server") == "fastapi-baseline/1"
    asyncio_answers[0]["payload"].pop("server", None)
    assert answers == asyncio_answers
    by_type = {a["msg_type"]: a for a in answers[6:8]}
    assert by_type["DONE"]["payload"]["interrupted"] is True
    assert by_type["INTERRUPT_ACK"]["payload"]["interrupted"] == ["r2"]
    assert [a["payload"].get("targets") for a in answers[10:12]] == [
        {"r2": "already_done"},
        {"never": "unknown"},
    ]
