"""AMQP 0-9-1 field tables with the type tag chosen by the caller, not by the value's size.

Stock clients (pamqp, pika, py-amqp) pick an integer width from the value, and pamqp cannot
write a ``bytes`` value as a byte array. RoadRunner needs exact tags (``rr_delay`` as ``l``,
``rr_headers`` as ``x``), so headers are encoded here, byte for byte. Decoding reads the tags
a RoadRunner message carries (``S``, ``l``, ``I``, ``x``, ``t``) itself, with pamqp's results,
and hands every other tag to pamqp: pamqp alone costs ~5 µs per ``rr_*`` table, most of the
consumer's time, and copies the rest of the table for every field.

Python value -> tag: ``str`` S, ``bool`` t, :class:`Int64` / plain ``int`` l, ``float`` d,
``bytes``/``bytearray`` x, ``None`` V, ``datetime`` T, ``dict`` F, ``list``/``tuple`` A,
``Decimal`` D.
"""

from __future__ import annotations

import datetime as _dt
import struct
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pamqp import decode as _decode

_LONG = struct.Struct(">I")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_TRUE, _FALSE = b"t\x01", b"t\x00"


class Int64(int):
    """An integer that is always written as a signed 64-bit field (tag ``l``)."""


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"field name longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


# Field names repeat (every message carries the same rr_* names): encoded once each.
_NAMES: dict[str, bytes] = {}


def _name(value: str) -> bytes:
    encoded = _NAMES.get(value)
    if encoded is None:
        encoded = _shortstr(value)
        if len(_NAMES) < 4096:
            _NAMES[value] = encoded
    return encoded


def _str(value: str) -> bytes:
    raw = value.encode()
    return b"S" + _LONG.pack(len(raw)) + raw


def _bytes(value: bytes) -> bytes:
    return b"x" + _LONG.pack(len(value)) + value


def _int(value: int) -> bytes:
    return b"l" + _INT64.pack(value)


def _bool(value: bool) -> bytes:
    return _TRUE if value else _FALSE


# Exact types first: one dict lookup instead of a chain of isinstance checks per value.
_BY_TYPE: dict[type, Any] = {str: _str, bytes: _bytes, int: _int, Int64: _int, bool: _bool}


def encode_value(value: Any) -> bytes:
    """Encode one field value, tag included."""
    encode = _BY_TYPE.get(type(value))
    if encode is not None:
        return encode(value)  # type: ignore[no-any-return]
    return _encode_other(value)


def _encode_other(value: Any) -> bytes:
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


class EncodedTable(Mapping[str, Any]):
    """A field table that carries its own encoding: :func:`encode_table` writes those bytes
    as they are. For tables built over and over from the same parts (every message's ``rr_*``
    headers), whose encoding the builder caches; read-only, so the two cannot drift apart."""

    __slots__ = ("_fields", "encoded")

    def __init__(self, fields: dict[str, Any], encoded: bytes) -> None:
        self._fields = fields
        self.encoded = encoded

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return repr(self._fields)


def encode_table(table: Mapping[str, Any]) -> bytes:
    """Encode a field table: 4-byte length, then name/value pairs in the mapping's order.

    A value that cannot be written (an integer beyond 64 bits, a date before 1970, a nested
    table over 4 GB) raises ``ValueError`` naming its key; an unsupported type ``TypeError``.
    """
    if type(table) is EncodedTable:
        return table.encoded
    body = encode_fields(table)
    return _LONG.pack(len(body)) + body


def encode_fields(table: Mapping[str, Any]) -> bytes:
    """The name/value pairs of a field table, without its length: tables can be assembled
    from parts encoded apart (see :class:`EncodedTable`)."""
    parts: list[bytes] = []
    append = parts.append
    by_type = _BY_TYPE
    for name, value in table.items():
        try:
            encode = by_type.get(type(value))
            append(_name(name) + (encode(value) if encode is not None else _encode_other(value)))
        except (struct.error, OverflowError) as exc:
            raise ValueError(f"header {name!r}: {value!r:.60} is out of range ({exc})") from None
        except ValueError as exc:
            raise ValueError(f"header {name!r}: {exc}") from None
        except TypeError as exc:
            raise TypeError(f"header {name!r}: {exc}") from None
    return b"".join(parts)


# A RoadRunner table starts with rr_id, which differs per message, and the rest repeats:
# those rests, decoded, by their bytes. Bounded; cleared when full.
_RR_ID = b"\x05rr_idS"
_TAILS: dict[bytes, dict[str, Any]] = {}
_TAILS_MAX = 256
# Values a cached tail may hold (bytearray is copied on the way out); tables and arrays are not.
_IMMUTABLE = frozenset({str, bytes, bytearray, int, bool, float, type(None), _dt.datetime, Decimal})


def decode_table(data: bytes) -> dict[str, Any]:
    """Decode a whole field table (length prefix included). Accepts every tag RabbitMQ sends.

    Values read as pamqp reads them: ``S`` a ``str`` (``bytes`` if not UTF-8), ``x`` a
    ``bytearray``, integers ``int``. ``ValueError`` when the table is malformed.
    """
    if not data.startswith(_RR_ID, 4) or len(data) < 15:
        return _decode_table(data)
    (size,) = _LONG.unpack_from(data, 11)
    tail = data[15 + size :]
    known = _TAILS.get(tail)
    if known is None or len(data) != 4 + _LONG.unpack_from(data, 0)[0]:
        table = _decode_table(data)
        rest = {name: value for name, value in table.items() if name != "rr_id"}
        if all(type(value) in _IMMUTABLE for value in rest.values()):
            if len(_TAILS) >= _TAILS_MAX:
                _TAILS.clear()
            _TAILS[tail] = rest
        return table
    raw = data[15 : 15 + size]
    try:
        rr_id: str | bytes = raw.decode()
    except UnicodeDecodeError:
        rr_id = raw
    table = {"rr_id": rr_id}
    for name, value in known.items():
        # A bytearray of its own each time: the caller may change it.
        table[name] = bytearray(value) if type(value) is bytearray else value
    return table


def _decode_table(data: bytes) -> dict[str, Any]:
    try:
        (length,) = _LONG.unpack_from(data, 0)
        end = 4 + length
        if end > len(data):
            raise ValueError("field table length exceeds the data")
        table: dict[str, Any] = {}
        pos = 4
        while pos < end:
            size = data[pos]
            key = data[pos + 1 : pos + 1 + size].decode()
            pos += 1 + size
            tag = data[pos]
            pos += 1
            value: Any
            if tag == 0x53:  # S
                (size,) = _LONG.unpack_from(data, pos)
                raw = data[pos + 4 : pos + 4 + size]
                pos += 4 + size
                try:
                    value = raw.decode()
                except UnicodeDecodeError:
                    value = raw
            elif tag == 0x6C:  # l
                (value,) = _INT64.unpack_from(data, pos)
                pos += 8
            elif tag == 0x78:  # x
                (size,) = _LONG.unpack_from(data, pos)
                value = bytearray(data[pos + 4 : pos + 4 + size])
                pos += 4 + size
            elif tag == 0x74:  # t
                value = data[pos] != 0
                pos += 1
            elif tag == 0x49:  # I
                (value,) = _INT32.unpack_from(data, pos)
                pos += 4
            else:
                consumed, value = _decode.embedded_value(data[pos - 1 : end])
                pos += consumed - 1
            table[key] = value
    except (struct.error, IndexError) as exc:
        raise ValueError(f"malformed field table: {exc}") from None
    if pos != end:
        raise ValueError("a field runs past the end of its table")
    return table
