"""The protocol as an AsyncAPI 3.0 document, generated from the models: no I/O.

Clients in other languages are written from a contract; this one is built from
the same pydantic models the server parses and encodes with, so it cannot drift
from the wire. Each message's payload is its model's JSON Schema (all of them
generated together, ``$defs`` lifted into ``components/schemas``); the binary
AUDIO frame, which no JSON Schema can describe, is a message of its own with
its byte layout and a schema of its JSON header. ``docs/asyncapi.json`` is this
document as :func:`asyncapi_json` renders it (``trio-agent schema`` prints it;
the server serves it at ``GET /asyncapi.json``), and a test keeps the two equal.

Everything here is deterministic (keys sorted, lists in the order of the
models), so the committed file only changes when the protocol does.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

from pydantic import BaseModel
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)
from pydantic_core import core_schema

from trio_agent._version import __version__
from trio_agent.protocol.audio import MAX_HEADER_BYTES, PCM_S16LE, SAMPLE_BYTES, AudioHeader
from trio_agent.protocol.constants import (
    DEFAULT_HOST,
    DEFAULT_PATH,
    DEFAULT_PORT,
    SUBPROTOCOL,
    TOKEN_QUERY_PARAMETER,
    TOKEN_SUBPROTOCOL_PREFIX,
)
from trio_agent.protocol.messages import (
    _CLIENT_MODELS,
    PROTOCOL_VERSION,
    SERVER_MODELS,
    CloseCode,
)

#: The version of the AsyncAPI specification the document follows.
ASYNCAPI_VERSION: Final = "3.0.0"
#: The channel's key: the one WebSocket endpoint.
CHANNEL: Final = "agent"
#: The message key of the binary AUDIO frame (server to client only).
AUDIO_MESSAGE: Final = "AUDIO"
#: The ``ws`` binding version of AsyncAPI's bindings repository the channel uses.
_WS_BINDING_VERSION: Final = "0.1.0"

_SCHEMAS: Final = "#/components/schemas/"
_MESSAGES: Final = "#/components/messages/"
_SECURITY: Final = "#/components/securitySchemes/"

#: The AUDIO frame's layout, byte by byte, as docs/protocol.md ("AUDIO") gives it.
AUDIO_LAYOUT: Final = (
    ("0-1", "the header length N: an unsigned 16-bit big-endian integer"),
    ("2 .. N+1", "the header: a UTF-8 JSON object (AudioHeader)"),
    (
        "N+2 .. end",
        f"the samples: {PCM_S16LE} (signed 16-bit little-endian, {SAMPLE_BYTES} bytes a "
        "sample), interleaved when channels > 1",
    ),
)


class _WireSchema(GenerateJsonSchema):
    """JSON Schema of what is on the wire, for each direction.

    What a server sends is encoded with ``exclude_none``: a field that is ``None``
    is left out, never ``null``. So in ``serialization`` mode (the server's
    messages) an optional field's schema is its value's, with no ``null`` and no
    ``"default": null``. In ``validation`` mode (the client's messages) ``null``
    stays: the server accepts it where the model does.
    """

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        """A server's field is on the wire unless it can be ``None``: ``exclude_none``
        drops nothing else (a default such as ``"protocol": "1.2"`` or ``[]`` is sent)."""
        if self.mode != "serialization":
            return super().field_is_required(field, total)
        inner: core_schema.CoreSchema = field["schema"]
        if inner["type"] == "default":
            if inner.get("default", ...) is None:
                return False
            inner = inner["schema"]
        kind: str = inner["type"]
        return kind != "nullable"

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        if self.mode == "serialization":
            return self.generate_inner(schema["schema"])
        return super().nullable_schema(schema)

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if self.mode == "serialization" and schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def _schemas() -> tuple[dict[str, str], dict[str, JsonSchemaValue]]:
    """Every model's schema, generated in one pass so shared parts are defined once.

    Returns the schema name of each message model (by class name), and the
    ``components/schemas`` map.
    """
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in _CLIENT_MODELS.values()),
        *((model, "serialization") for model in SERVER_MODELS.values()),
        (AudioHeader, "serialization"),
    ]
    refs, top = models_json_schema(
        inputs, ref_template=_SCHEMAS + "{model}", schema_generator=_WireSchema
    )
    names = {model.__name__: ref["$ref"].removeprefix(_SCHEMAS) for (model, _), ref in refs.items()}
    schemas: dict[str, JsonSchemaValue] = top.get("$defs", {})
    for name in names.values():
        # Each model has its msg_type as a default (the class is the type), but both
        # parsers pick the model by it: a frame without one is refused.
        required = schemas[name].setdefault("required", [])
        if "msg_type" not in required:
            required.insert(0, "msg_type")
    return names, schemas


def _summary(model: type[BaseModel]) -> str:
    """The first line of a model's docstring (``"REQUEST: start a request; ..."``),
    its reST literals as Markdown ones."""
    return (model.__doc__ or model.__name__).strip().splitlines()[0].replace("``", "`")


def _json_message(
    key: str, msg_type: str, model: type[BaseModel], schema: str, *, answers: bool
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": msg_type,
        "title": key,
        "summary": _summary(model),
        "contentType": "application/json",
        "payload": {"$ref": _SCHEMAS + schema},
    }
    if answers:
        message["correlationId"] = {
            "description": "the msg_id of the client message this one answers",
            "location": "$message.payload#/ref",
        }
    return message


def _server_key(msg_type: str) -> str:
    """A server message's key; HEARTBEAT goes both ways, and its answer is a reply."""
    return f"{msg_type}_REPLY" if msg_type in _CLIENT_MODELS else msg_type


#: Server messages that answer one client message (their ``ref`` names it).
_ANSWERS: Final = frozenset({"INTERRUPT_ACK", "HEARTBEAT", "RESUMED", "ERROR"})


def _audio_message(header_schema: str) -> dict[str, Any]:
    table = "\n".join(f"| {where} | {what} |" for where, what in AUDIO_LAYOUT)
    return {
        "name": "AUDIO",
        "title": AUDIO_MESSAGE,
        "summary": "AUDIO (v1.1): one chunk of a spoken response, as a binary WebSocket message.",
        "description": (
            "A binary WebSocket message, server to client only (a client's binary message is "
            "answered with ERROR INVALID_MESSAGE). Its layout:\n\n"
            f"| bytes | content |\n|---|---|\n{table}\n\n"
            f"The header (at most {MAX_HEADER_BYTES} bytes) is the JSON object of the schema "
            f"`{header_schema}`; `duration_ms` is samples x 1000 / `sample_rate`, exactly. "
            "AUDIO frames have their own `seq`, apart from STREAM's, and go through the same "
            "stream lane: after the INTERRUPT_ACK naming a request, none of its AUDIO frames "
            "is written."
        ),
        "contentType": "application/octet-stream",
        "payload": {
            "type": "string",
            "format": "binary",
            "description": "length prefix (2 bytes, big-endian), JSON header, samples",
            "x-layout": [{"bytes": where, "content": what} for where, what in AUDIO_LAYOUT],
            "x-header": {"$ref": _SCHEMAS + header_schema},
        },
    }


def _security_schemes(path: str) -> dict[str, Any]:
    optional = " Only asked for when the server runs with --token (TRIO_AGENT_TOKEN)."
    return {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <TOKEN> on the handshake." + optional,
        },
        "queryToken": {
            "type": "httpApiKey",
            "name": TOKEN_QUERY_PARAMETER,
            "in": "query",
            "description": f"The token in the query string: {path}?"
            f"{TOKEN_QUERY_PARAMETER}=<TOKEN>." + optional,
        },
        "tokenSubprotocol": {
            "type": "httpApiKey",
            "name": "Sec-WebSocket-Protocol",
            "in": "header",
            "description": (
                f"For browsers, which cannot set headers on a WebSocket handshake: offer the "
                f"subprotocol {TOKEN_SUBPROTOCOL_PREFIX}<TOKEN> next to {SUBPROTOCOL} "
                f"(without {SUBPROTOCOL}: HTTP 400). The server selects {SUBPROTOCOL} and never "
                "echoes the token." + optional
            ),
        },
    }


def _ws_binding() -> dict[str, Any]:
    return {
        "method": "GET",
        "headers": {
            "type": "object",
            "properties": {
                "Sec-WebSocket-Protocol": {
                    "type": "string",
                    "description": (
                        f"Offer {SUBPROTOCOL}: the server selects it. With a token, a browser "
                        f"adds {TOKEN_SUBPROTOCOL_PREFIX}<TOKEN>, which is never selected."
                    ),
                    "examples": [SUBPROTOCOL, f"{SUBPROTOCOL}, {TOKEN_SUBPROTOCOL_PREFIX}<TOKEN>"],
                },
                "Authorization": {
                    "type": "string",
                    "pattern": "^Bearer ",
                    "description": "Bearer <TOKEN>, when the server has a token.",
                },
            },
        },
        "query": {
            "type": "object",
            "properties": {
                TOKEN_QUERY_PARAMETER: {
                    "type": "string",
                    "description": "The token, when the server has one.",
                },
            },
        },
        "bindingVersion": _WS_BINDING_VERSION,
    }


def _operation(
    action: Literal["send", "receive"], summary: str, keys: list[str], reply: str | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{key}"} for key in keys],
    }
    if reply is not None:
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{reply}"}],
        }
    return operation


def asyncapi_document(path: str = DEFAULT_PATH) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of protocol v1.2, for a server at ``path``.

    It describes the server: it *receives* the client's messages and *sends* its
    own, all on one channel, the WebSocket at ``path`` (``--path``, default
    ``/ws``). Pure and deterministic: the same ``path`` gives the same document.
    """
    names, schemas = _schemas()
    messages: dict[str, Any] = {}
    client_keys = []
    for msg_type, model in _CLIENT_MODELS.items():
        messages[msg_type] = _json_message(
            msg_type, msg_type, model, names[model.__name__], answers=False
        )
        client_keys.append(msg_type)
    server_keys = []
    for msg_type, server_model in SERVER_MODELS.items():
        key = _server_key(msg_type)
        messages[key] = _json_message(
            key, msg_type, server_model, names[server_model.__name__], answers=msg_type in _ANSWERS
        )
        server_keys.append(key)
    messages[AUDIO_MESSAGE] = _audio_message(names[AudioHeader.__name__])
    server_keys.append(AUDIO_MESSAGE)
    security_schemes = _security_schemes(path)
    security = [{"$ref": _SECURITY + name} for name in security_schemes]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "trio-agent",
            "version": PROTOCOL_VERSION,
            "description": (
                "Interruptible streaming agents over one WebSocket. A client sends REQUESTs "
                "and INTERRUPTs; the server streams each response (STREAM frames, binary "
                "AUDIO frames when spoken) and ends it with one DONE; an INTERRUPT is "
                "answered by one INTERRUPT_ACK, written ahead of every queued STREAM frame. "
                "info.version is the protocol version (SESSION.payload.protocol). The "
                "guarantees, limits and error rules are in docs/protocol.md, the contract in "
                "prose; this document is generated from the models the server parses and "
                "encodes with (trio_agent/protocol/asyncapi.py)."
            ),
            "license": {"name": "MIT"},
            "x-server-version": __version__,
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "{host}:{port}",
                "protocol": "ws",
                "description": (
                    "A trio-agent server (scripts/serve). With --certfile/--keyfile it speaks "
                    "wss instead. Plain HTTP on the same port: /healthz, /readyz, /metrics, "
                    "/asyncapi.json."
                ),
                "variables": {
                    "host": {"default": DEFAULT_HOST},
                    "port": {"default": str(DEFAULT_PORT)},
                },
                "security": security,
            },
        },
        "channels": {
            CHANNEL: {
                "address": path,
                "title": "The agent's WebSocket",
                "description": (
                    f"One session per connection; its first frame is SESSION. A client that "
                    f"resumes a session (v1.2) sends RESUME as its first frame, answered by "
                    f"RESUMED and the replay. Subprotocol: {SUBPROTOCOL}. Close codes: "
                    + ", ".join(f"{code.value} {code.name}" for code in CloseCode)
                    + "."
                ),
                "messages": {key: {"$ref": _MESSAGES + key} for key in messages},
                "bindings": {"ws": _ws_binding()},
                "x-subprotocols": [SUBPROTOCOL, f"{TOKEN_SUBPROTOCOL_PREFIX}<TOKEN>"],
                "x-close-codes": {str(code.value): code.name for code in CloseCode},
            },
        },
        "operations": {
            "receiveClientMessages": _operation(
                "receive", "Every frame a client may send.", client_keys
            ),
            "sendServerMessages": _operation("send", "Every frame the server sends.", server_keys),
            "receiveInterrupt": _operation(
                "receive",
                "An INTERRUPT: cut one request or all, answered by one INTERRUPT_ACK.",
                ["INTERRUPT"],
                reply="INTERRUPT_ACK",
            ),
            "receiveHeartbeat": _operation(
                "receive",
                "A HEARTBEAT, answered at once by a HEARTBEAT with ref = its msg_id.",
                ["HEARTBEAT"],
                reply=_server_key("HEARTBEAT"),
            ),
            "receiveResume": _operation(
                "receive",
                "A RESUME (v1.2), answered by RESUMED and the replay (or ERROR and a close).",
                ["RESUME"],
                reply="RESUMED",
            ),
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": security_schemes,
        },
    }


def asyncapi_json(path: str = DEFAULT_PATH) -> str:
    """:func:`asyncapi_document` as JSON text: keys sorted, two-space indent, one
    final newline; the bytes of ``docs/asyncapi.json`` for the default path."""
    return json.dumps(asyncapi_document(path), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
