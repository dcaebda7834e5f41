"""AMQP 0-9-1 field tables with the type tag chosen by the caller, not by the value's size.

Stock clients (pamqp, pika, py-amqp) pick an integer width from the value, and pamqp cannot
write a ``bytes`` value as a byte array. RoadRunner needs exact tags (``rr_delay`` as ``l``,
``rr_headers`` as ``x``), so headers are encoded here, byte for byte, and decoded with pamqp.

Python value -> tag: ``str`` S, ``bool`` t, :class:`Int64` / plain ``int`` l, ``float`` d,
``bytes``/``bytearray`` x, ``None`` V, ``datetime`` T, ``dict`` F, ``list``/``tuple`` A,
``Decimal`` D.
"""

from __future__ import annotations

import datetime as _dt
import struct
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from pamqp import decode as _decode

_LONG = struct.Struct(">I")
_INT64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")


class Int64(int):
    """An integer that is always written as a signed 64-bit field (tag ``l``)."""


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"field name longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def encode_value(value: Any) -> bytes:
    """Encode one field value, tag included."""
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        return b"l" + _INT64.pack(value)
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + _LONG.pack(len(raw)) + raw
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return b"x" + _LONG.pack(len(raw)) + raw
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if value is None:
        return b"V"
    if isinstance(value, _dt.datetime):
        return b"T" + _U64.pack(int(value.timestamp()))
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int) or exponent > 0:
            raise ValueError(f"cannot encode decimal {value}")
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        return b"D" + bytes((-exponent,)) + struct.pack(">i", unscaled)
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    if isinstance(value, Sequence):
        body = b"".join(encode_value(item) for item in value)
        return b"A" + _LONG.pack(len(body)) + body
    raise TypeError(f"cannot encode {type(value).__name__} in an AMQP field table")


def encode_table(table: Mapping[str, Any]) -> bytes:
    """Encode a field table: 4-byte length, then name/value pairs in the mapping's order.

    A value that cannot be written (an integer beyond 64 bits, a date before 1970, a nested
    table over 4 GB) raises ``ValueError`` naming its key; an unsupported type ``TypeError``.
    """
    parts: list[bytes] = []
    append = parts.append
    for name, value in table.items():
        try:
            append(_shortstr(name) + encode_value(value))
        except (struct.error, OverflowError) as exc:
            raise ValueError(f"header {name!r}: {value!r:.60} is out of range ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"header {name!r}: {exc}") from None
        except TypeError as exc:
            raise TypeError(f"header {name!r}: {exc}") from None
    body = b"".join(parts)
    return _LONG.pack(len(body)) + body


def decode_table(data: bytes) -> dict[str, Any]:
    """Decode a whole field table (length prefix included). Accepts every tag RabbitMQ sends."""
    _, table = _decode.field_table(data)
    return dict(table)
