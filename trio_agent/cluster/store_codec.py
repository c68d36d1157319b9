"""How a node's frames and control messages are laid out in the store. Pure.

A session's stream holds one entry per write batch of one node: field ``o`` the
node, field ``f`` its frames packed one after another, each a fixed header
(:data:`_FRAME_HEAD`: sort, text or bytes, ``seq``, a DONE's ``frames``, the lengths
of the request id and of the data), the request id, the data. One ``XADD`` per
batch rather than per frame: a command costs the node far more than packing a
frame does. Control messages are JSON. ``docs/cluster.md`` ("Keys in Redis").
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from trio_agent.cluster.store import ControlMessage, FrameWrite, StoredFrame, StoredSort

__all__ = ["decode_control", "encode_control", "pack_frames", "unpack_frames"]

#: One frame in a packed stream entry: sort, text or bytes, seq, frames, the lengths
#: of its request id and of its data; then the request id, then the data.
_FRAME_HEAD = struct.Struct(">BBiiHI")
_SORT_CODES = {StoredSort.STREAM: 0, StoredSort.AUDIO: 1, StoredSort.DONE: 2}
_SORTS = {code: sort for sort, code in _SORT_CODES.items()}


def pack_frames(frames: Sequence[FrameWrite]) -> bytes:
    """The frames of one write batch (one session, one node) as one stream entry's
    value: one ``XADD`` per batch rather than per frame (a command costs the node far
    more CPU than packing a frame does)."""
    parts: list[bytes] = []
    append = parts.append
    head = _FRAME_HEAD.pack
    stream = StoredSort.STREAM
    # A batch's frames are mostly one request's: its id is encoded once per run.
    request_id = ""
    rid = b""
    for frame in frames:
        if frame.request_id != request_id:
            request_id = frame.request_id
            rid = request_id.encode()
        data = frame.data
        text = isinstance(data, str)
        raw = data.encode() if isinstance(data, str) else data
        # (STREAM by identity: an Enum's hash is a Python call, once per frame.)
        sort = 0 if frame.sort is stream else _SORT_CODES[frame.sort]
        append(head(sort, text, frame.seq, frame.frames, len(rid), len(raw)))
        append(rid)
        append(raw)
    return b"".join(parts)


def unpack_frames(packed: bytes, *, entry_id: str, node_id: str) -> list[StoredFrame]:
    """The frames :func:`pack_frames` packed, in order; ``entry_id`` and ``node_id``
    are the stream entry's."""
    frames: list[StoredFrame] = []
    at = 0
    while at + _FRAME_HEAD.size <= len(packed):
        sort, text, seq, count, rid_len, data_len = _FRAME_HEAD.unpack_from(packed, at)
        at += _FRAME_HEAD.size
        rid = packed[at : at + rid_len].decode()
        at += rid_len
        data = packed[at : at + data_len]
        at += data_len
        frames.append(
            StoredFrame(
                entry_id=entry_id,
                request_id=rid,
                sort=_SORTS[sort],
                seq=seq,
                data=data.decode() if text else data,
                node_id=node_id,
                frames=count,
            )
        )
    return frames


def encode_control(message: ControlMessage) -> bytes:
    return json.dumps(
        {
            "kind": message.kind,
            "session_id": message.session_id,
            "from_node": message.from_node,
            "msg_id": message.msg_id,
            "request_ids": list(message.request_ids),
            "reason": message.reason,
            "epoch": message.epoch,
            "extra": dict(message.extra),
        },
        separators=(",", ":"),
    ).encode()


def decode_control(data: bytes | str) -> ControlMessage:
    """A control message from its JSON; raises ``ValueError``/``TypeError``/``KeyError`` on junk."""
    body = json.loads(data)
    kind = body["kind"]
    if kind not in ("interrupt", "moved", "flushed"):
        raise ValueError(f"unknown control message kind {kind!r}")
    return ControlMessage(
        kind=kind,
        session_id=str(body["session_id"]),
        from_node=str(body["from_node"]),
        msg_id=str(body.get("msg_id", "")),
        request_ids=tuple(str(r) for r in body.get("request_ids", ())),
        reason=str(body.get("reason", "")),
        epoch=int(body.get("epoch", 0)),
        extra={str(k): str(v) for k, v in dict(body.get("extra", {})).items()},
    )
