"""The AsyncAPI 3.0 document of the protocol: complete, committed, served, and true to the wire.

The message types are read from the models (the ``msg_type`` of each class in
``ClientMessage`` and ``ServerMessage``), not from the document, so a new message
without an entry fails here. The frames of a real conversation over a socket are
checked against the document's schemas, so a schema that calls a field required
which the server leaves out (or the reverse) fails too. The official parser's
verdict is a node test: ``tests/js/asyncapi.test.mjs``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import trio
from http_client import fetch

from trio_agent import agents as builtin
from trio_agent.protocol import (
    PROTOCOL_VERSION,
    SUBPROTOCOL,
    TOKEN_QUERY_PARAMETER,
    TOKEN_SUBPROTOCOL_PREFIX,
    AudioHeader,
    ClientMessage,
    ServerMessage,
    asyncapi_document,
    asyncapi_json,
    encode_audio_frame,
)
from trio_agent.protocol.asyncapi import AUDIO_LAYOUT
from trio_agent.testing.wire import Frame, connect

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "asyncapi.json"
REGENERATE = ".venv/bin/trio-agent schema > docs/asyncapi.json"

Json = dict[str, Any]


def msg_types(union: Any) -> set[str]:
    """The ``msg_type`` of every model of a union of message models."""
    return {model.model_fields["msg_type"].default for model in typing.get_args(union)}


CLIENT_TYPES = msg_types(ClientMessage)
SERVER_TYPES = msg_types(ServerMessage) | {AudioHeader.model_fields["msg_type"].default}


def resolve(document: Json, ref: str) -> Json:
    """The object a local ``$ref`` (``#/a/b``) points to; ``KeyError`` if none."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return typing.cast(Json, node)


def deref(document: Json, node: Json) -> Json:
    while "$ref" in node:
        node = resolve(document, node["$ref"])
    return node


def operation_messages(document: Json, operation: str) -> dict[str, Json]:
    """The messages of an operation, by the ``msg_type`` each carries."""
    found = {}
    for ref in document["operations"][operation]["messages"]:
        message = deref(document, ref)
        found[message["name"]] = message
    return found


# --------------------------------------------------------------------------- the document


def test_the_committed_document_is_what_the_code_generates():
    assert COMMITTED.read_text(encoding="utf-8") == asyncapi_json(), (
        f"docs/asyncapi.json is stale: regenerate it with `{REGENERATE}`"
    )


def test_the_document_is_asyncapi_3_of_protocol_1_2():
    document = asyncapi_document()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["version"] == PROTOCOL_VERSION == "1.2"
    assert document["defaultContentType"] == "application/json"


def test_every_message_type_of_the_models_is_in_the_document_with_its_direction():
    document = asyncapi_document()
    received = operation_messages(document, "receiveClientMessages")
    sent = operation_messages(document, "sendServerMessages")
    assert document["operations"]["receiveClientMessages"]["action"] == "receive"
    assert document["operations"]["sendServerMessages"]["action"] == "send"
    assert set(received) == CLIENT_TYPES == {"REQUEST", "INTERRUPT", "HEARTBEAT", "RESUME"}
    assert set(sent) == SERVER_TYPES
    assert {"SESSION", "STREAM", "DONE", "INTERRUPT_ACK", "ERROR", "RESUMED", "AUDIO"} <= set(sent)
    for msg_type, message in [*received.items(), *sent.items()]:
        if msg_type == "AUDIO":
            continue
        assert message["contentType"] == "application/json"
        schema = deref(document, message["payload"])
        assert schema["properties"]["msg_type"]["const"] == msg_type
        assert "msg_type" in schema["required"]
        assert "payload" in schema["properties"]


def test_the_reply_operations_pair_each_question_with_its_answer():
    document = asyncapi_document()
    pairs = {}
    for operation in document["operations"].values():
        if "reply" in operation:
            (asked,) = [deref(document, m)["name"] for m in operation["messages"]]
            (answer,) = [deref(document, m) for m in operation["reply"]["messages"]]
            pairs[asked] = answer["name"]
            assert answer["correlationId"]["location"] == "$message.payload#/ref"
    assert pairs == {"INTERRUPT": "INTERRUPT_ACK", "HEARTBEAT": "HEARTBEAT", "RESUME": "RESUMED"}


def test_schemas_are_lifted_into_components_and_every_ref_resolves():
    document = asyncapi_document()
    text = json.dumps(document)
    assert "$defs" not in text
    refs = re.findall(r'"\$ref": "([^"]+)"', text)
    assert refs
    for ref in refs:
        resolve(document, ref)
    schemas = document["components"]["schemas"]
    assert {"RequestPayload", "DonePayload", "ErrorCode", "AudioHeader"} <= set(schemas)
    assert set(schemas["ErrorCode"]["enum"]) >= {"INVALID_JSON", "RESUME_DENIED"}


def test_the_server_never_sends_null_and_its_optional_fields_are_not_required():
    schemas = asyncapi_document()["components"]["schemas"]
    done = schemas["DonePayload"]
    assert "null" not in json.dumps(done)
    assert done["properties"]["reason"] == {"title": "Reason", "type": "string"}
    assert set(done["required"]) == {"status", "interrupted", "frames"}
    # A client may send null where the model allows it.
    assert {"type": "null"} in schemas["RequestMessage"]["properties"]["ts"]["anyOf"]


def test_the_channel_is_the_servers_path_with_its_subprotocols():
    channel = asyncapi_document()["channels"]["agent"]
    assert channel["address"] == "/ws"
    assert channel["x-subprotocols"] == [SUBPROTOCOL, f"{TOKEN_SUBPROTOCOL_PREFIX}<TOKEN>"]
    binding = channel["bindings"]["ws"]
    assert binding["method"] == "GET"
    assert SUBPROTOCOL in json.dumps(binding["headers"])
    assert TOKEN_QUERY_PARAMETER in binding["query"]["properties"]
    assert channel["x-close-codes"]["4001"] == "RESUMED_ELSEWHERE"
    assert asyncapi_document("/agent")["channels"]["agent"]["address"] == "/agent"


def test_the_three_ways_to_present_the_token_are_security_schemes_of_the_server():
    document = asyncapi_document()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["queryToken"]["in"], schemes["queryToken"]["name"]) == ("query", "token")
    subprotocol = schemes["tokenSubprotocol"]
    assert (subprotocol["in"], subprotocol["name"]) == ("header", "Sec-WebSocket-Protocol")
    assert f"{TOKEN_SUBPROTOCOL_PREFIX}<TOKEN>" in subprotocol["description"]
    server = document["servers"]["local"]
    assert [deref(document, s) for s in server["security"]] == list(schemes.values())


def test_the_audio_message_describes_the_bytes_encode_audio_frame_writes():
    document = asyncapi_document()
    audio = operation_messages(document, "sendServerMessages")["AUDIO"]
    assert audio["contentType"] == "application/octet-stream"
    assert audio["payload"]["format"] == "binary"
    assert deref(document, audio["payload"]["x-header"]) == deref(
        document, {"$ref": "#/components/schemas/AudioHeader"}
    )
    header = AudioHeader(request_id="r1", seq=3, start_ms=60, duration_ms=0.25, sample_rate=16000)
    frame = encode_audio_frame(header, b"\x00\x00\xe8\x03\x18\xfc\xff\x7f")
    # Read it as the layout says: bytes 0-1 big-endian N, the header, then the samples.
    assert [where for where, _ in AUDIO_LAYOUT] == ["0-1", "2 .. N+1", "N+2 .. end"]
    n = int.from_bytes(frame[0:2], "big")
    assert json.loads(frame[2 : n + 2]) == header.model_dump()
    assert frame[n + 2 :] == b"\x00\x00\xe8\x03\x18\xfc\xff\x7f"
    assert "pcm_s16le" in AUDIO_LAYOUT[2][1]


# --------------------------------------------------------------------------- the wire


def check(document: Json, schema: Json, value: Any, where: str = "frame") -> list[str]:
    """Where ``value`` breaks ``schema``: the subset of JSON Schema the models produce."""
    schema = deref(document, schema)
    if "anyOf" in schema:
        if all(check(document, option, value, where) for option in schema["anyOf"]):
            return [f"{where}: matches no option of {schema['anyOf']}"]
        return []
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
        "integer": int,
        "number": (int, float),
    }
    kind = schema.get("type")
    if kind is not None and (
        not isinstance(value, kinds[kind]) or (kind in ("integer", "number") and value is True)
    ):
        return [f"{where}: {value!r} is not {kind}"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}: {value!r} is not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    problems = []
    if isinstance(value, dict):
        problems += [f"{where}.{k}: missing" for k in schema.get("required", ()) if k not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                problems += check(document, properties[key], item, f"{where}.{key}")
            elif isinstance(extra, dict):
                problems += check(document, extra, item, f"{where}.{key}")
            elif properties and extra is not True:
                problems.append(f"{where}.{key}: not in the schema")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += check(document, schema["items"], item, f"{where}[{i}]")
    return problems


async def test_the_frames_of_a_real_conversation_fit_the_document(start_server):
    """SESSION, spoken STREAM and AUDIO, DONE, INTERRUPT_ACK, HEARTBEAT, ERROR and
    RESUMED, as a real server writes them to a socket, each against its message's
    schema; and the client's frames against theirs."""
    document = asyncapi_document()
    server = await start_server({"lorem": builtin.lorem, "echo": builtin.echo}, speech="builtin")
    async with connect(server, "socket") as a:
        await a.request("r1", "two words", agent="echo", voice=True, audio_pace=0)
        await a.until_done("r1")
        await a.request("r2", agent="lorem", words=500, words_per_s=50)
        await a.recv_until(lambda f: f["msg_type"] == "STREAM" and f["request_id"] == "r2")
        await a.until_ack(await a.interrupt("r2", reason="USER_NEW_INPUT"))
        await a.until_done("r2")
        beat = await a.heartbeat()
        await a.recv_until(lambda f: f["msg_type"] == "HEARTBEAT" and f["ref"] == beat)
        await a.send_raw('{"msg_type": "REQUEST", "msg_id": "bad", "payload": {}}')
        await a.recv_until(lambda f: f["msg_type"] == "ERROR")
        await trio.aclose_forcefully(a.stream)
    resume: Frame = {
        "msg_type": "RESUME",
        "msg_id": "c-resume",
        "session_id": a.session_id,
        "payload": {"token": a.session["payload"]["resume"]["token"], "last_seq": {"r2": -1}},
    }
    async with connect(server, "socket") as b:
        # Unchecked: the guarantee checker follows one connection, and this one
        # starts in the middle of the session.
        await b.send_raw(json.dumps(resume))
        resumed = await b.wire.receive()
    assert resumed["msg_type"] == "RESUMED"
    received = [*a.received, b.session, resumed]
    audio_fields = set(AudioHeader.model_fields)
    frames = [
        {k: v for k, v in f.items() if k in audio_fields} if f["msg_type"] == "AUDIO" else f
        for f in received
    ]
    assert {f["msg_type"] for f in frames} == SERVER_TYPES
    server_messages = {
        deref(document, m)["name"]: deref(document, m)
        for m in document["operations"]["sendServerMessages"]["messages"]
    }
    for frame in frames:
        message = server_messages[frame["msg_type"]]
        schema = message["payload"].get("x-header", message["payload"])
        assert check(document, schema, frame) == [], frame
    client_messages = operation_messages(document, "receiveClientMessages")
    client_frames = [*(line.frame for line in a.wire.transcript if line.sent), resume]
    assert {f["msg_type"] for f in client_frames} == CLIENT_TYPES
    for frame in client_frames:
        schema = client_messages[frame["msg_type"]]["payload"]
        assert check(document, schema, frame) == [], frame


def test_the_check_finds_what_breaks_a_schema():
    """The check above is not vacuous: a missing field, a null, an unknown field."""
    document = asyncapi_document()
    stream = {"$ref": "#/components/schemas/StreamMessage"}
    good = {
        "msg_type": "STREAM",
        "msg_id": "s1",
        "session_id": "x",
        "request_id": "r1",
        "ts": 1,
        "payload": {"seq": 0, "delta": "hi"},
    }
    assert check(document, stream, good) == []
    assert check(document, stream, {**good, "payload": {"seq": 0}}) == [
        "frame.payload.delta: missing"
    ]
    assert check(document, stream, {**good, "ref": None}) == ["frame.ref: None is not string"]
    assert check(document, stream, {**good, "msg_type": "DONE"}) != []
    assert check(document, stream, {**good, "payload": {"seq": 0, "delta": "a", "x": 1}}) != []


# --------------------------------------------------------------------------- where it is served


async def test_the_server_serves_the_document_for_its_path(start_server):
    server = await start_server(path="/agent")
    response = await fetch(server, "/asyncapi.json")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.body == asyncapi_json("/agent").encode()
    assert json.loads(response.body)["channels"]["agent"]["address"] == "/agent"
    again = await fetch(
        server, "/asyncapi.json", headers=[("If-None-Match", response.headers["etag"])]
    )
    assert (again.status, again.body) == (304, b"")
    head = await fetch(server, "/asyncapi.json", "HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(response.body))


async def test_the_default_server_serves_the_committed_document(start_server):
    server = await start_server()
    response = await fetch(server, "/asyncapi.json")
    assert response.body == COMMITTED.read_bytes()


def test_trio_agent_schema_prints_the_document():
    done = subprocess.run(
        [sys.executable, "-m", "trio_agent", "schema"],
        capture_output=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    assert json.loads(done.stdout) == asyncapi_document()
    assert done.stdout.decode() == COMMITTED.read_text(encoding="utf-8")
    path = subprocess.run(
        [sys.executable, "-m", "trio_agent", "schema", "--path", "/agent"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert json.loads(path.stdout)["channels"]["agent"]["address"] == "/agent"
