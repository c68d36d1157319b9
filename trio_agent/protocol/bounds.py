"""The bounds of what a client may send: id formats, lengths, option sizes.

Every string a client sends that the server keeps or sends back is bounded here,
when the frame is parsed, so an ERROR, an ACK or a DONE never echoes more than a
few hundred characters of a client's text. ``docs/protocol.md`` states each rule;
``docs/security.md`` why.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Final

from pydantic import Field, StrictFloat, StringConstraints

#: The characters of a client id (``msg_id``, ``session_id``, ``ref``, ``request_id``).
ID_ALPHABET: Final = "A-Za-z0-9._:-"
#: The longest ``msg_id``, ``session_id`` or ``ref``; also the longest echo of an id
#: in an ERROR about a frame whose id was refused.
MAX_ID_CHARS: Final = 128
#: What a ``msg_id``, ``session_id`` or ``ref`` may look like: 1 to 128 characters of
#: ``[A-Za-z0-9._:-]``.
ID_PATTERN: Final = rf"^[{ID_ALPHABET}]{{1,{MAX_ID_CHARS}}}$"
#: What a ``request_id`` may look like: 1 to 64 characters of ``[A-Za-z0-9._:-]``.
REQUEST_ID_PATTERN: Final = rf"^[{ID_ALPHABET}]{{1,64}}$"
#: The longest INTERRUPT ``reason``: it comes back in the ACK and in each DONE it causes.
MAX_REASON_CHARS: Final = 256
#: ``options`` hold at most this many values, nested ones included ...
MAX_OPTION_VALUES: Final = 256
#: ... and at most this many UTF-8 bytes of strings, keys included.
MAX_OPTION_STRING_BYTES: Final = 16 * 1024
#: The integers ``options`` may hold: those of a signed 64-bit integer.
OPTION_INT_MIN: Final = -(2**63)
OPTION_INT_MAX: Final = 2**63 - 1

RequestId = Annotated[str, StringConstraints(pattern=REQUEST_ID_PATTERN, strict=True)]
MsgId = Annotated[str, StringConstraints(pattern=ID_PATTERN, strict=True)]
#: A number where the protocol says number: an int or a float, never a string or a
#: boolean, and finite.
FiniteNumber = Annotated[StrictFloat, Field(allow_inf_nan=False)]


def id_echo(value: object) -> str | None:
    """What an ERROR may echo of a client's id: the id if it is a string, cut to
    :data:`MAX_ID_CHARS` characters; ``None`` otherwise."""
    return value[:MAX_ID_CHARS] if isinstance(value, str) else None


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Refuse ``options`` past the bounds of the protocol (``ValueError``).

    At most :data:`MAX_OPTION_VALUES` values, nested ones included, and
    :data:`MAX_OPTION_STRING_BYTES` bytes of strings, keys included; every integer
    within a signed 64 bits and every number finite, so that no agent meets a
    number it cannot turn into a float. The walk stops as soon as a bound is
    passed, so its cost is bounded whatever the size of the frame.
    """
    values = 0
    string_bytes = 0
    pending: list[Any] = [options]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            string_bytes += _utf8_size(item)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if not OPTION_INT_MIN <= item <= OPTION_INT_MAX:
                raise ValueError("an integer must be between -2**63 and 2**63-1")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("a number must be finite")
        elif isinstance(item, dict | list):
            values += len(item)
            if values > MAX_OPTION_VALUES:
                raise ValueError(f"at most {MAX_OPTION_VALUES} values, nested ones included")
            if isinstance(item, dict):
                string_bytes += sum(_utf8_size(key) for key in item)
                pending += item.values()
            else:
                pending += item
        if string_bytes > MAX_OPTION_STRING_BYTES:
            raise ValueError(f"at most {MAX_OPTION_STRING_BYTES} bytes of strings, keys included")
    return options
