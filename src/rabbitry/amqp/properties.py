"""AMQP basic properties (the content header's property list), encoded and decoded by hand.

pamqp would pick its own type tags for the ``headers`` table, and RoadRunner needs exact ones,
so the table goes through :mod:`rabbitry.amqp.fieldtable` and the rest of the list, being
short strings, octets and one timestamp, is cheaper to write here than to adapt. Pure, no I/O.
"""

from __future__ import annotations

import datetime as _dt
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rabbitry.amqp.fieldtable import decode_table, encode_table

_FLAGS = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_UTC = _dt.UTC

# Property flag bits, highest first, in the order the values appear on the wire.
_CONTENT_TYPE = 0x8000
_CONTENT_ENCODING = 0x4000
_HEADERS = 0x2000
_DELIVERY_MODE = 0x1000
_PRIORITY = 0x0800
_CORRELATION_ID = 0x0400
_REPLY_TO = 0x0200
_EXPIRATION = 0x0100
_MESSAGE_ID = 0x0080
_TIMESTAMP = 0x0040
_TYPE = 0x0020
_USER_ID = 0x0010
_APP_ID = 0x0008


@dataclass(frozen=True)
class Properties:
    """Basic properties of one message; ``None`` leaves a property out of the header.

    ``headers`` is written with :func:`~rabbitry.amqp.fieldtable.encode_table`, so
    :class:`~rabbitry.amqp.fieldtable.Int64` and ``bytes`` keep their tags. ``timestamp``
    may be given as whole seconds or a ``datetime``; it is decoded as an aware UTC ``datetime``.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: Mapping[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | _dt.datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


EMPTY = Properties()
_new = object.__new__
_set = object.__setattr__
_NAMES = frozenset(Properties.__dataclass_fields__)


def properties_of(fields: Mapping[str, Any]) -> Properties:
    """``Properties(**fields)`` without the frozen ``__init__``'s 13 guarded setattrs (most of
    the cost of building one per published message); ``TypeError`` for an unknown name."""
    if not fields.keys() <= _NAMES:
        unknown = ", ".join(sorted(fields.keys() - _NAMES))
        raise TypeError(f"unknown basic properties: {unknown}")
    props = _new(Properties)
    _set(props, "__dict__", dict(fields))
    return props


def _shortstr(value: str) -> bytes:
    # surrogateescape: a string salvaged from bytes that were not UTF-8 encodes back to them,
    # so a dead-lettered copy carries the publisher's exact bytes.
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) > 255:
        raise ValueError(f"short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def encode_properties(props: Properties) -> bytes:
    """Encode the flag word and property list that follow ``body_size`` in a content header."""
    if props is EMPTY:
        return b"\x00\x00"
    flags = 0
    parts: list[bytes] = []
    if props.content_type is not None:
        flags |= _CONTENT_TYPE
        parts.append(_shortstr(props.content_type))
    if props.content_encoding is not None:
        flags |= _CONTENT_ENCODING
        parts.append(_shortstr(props.content_encoding))
    if props.headers is not None:
        flags |= _HEADERS
        parts.append(encode_table(props.headers))
    if props.delivery_mode is not None:
        flags |= _DELIVERY_MODE
        parts.append(bytes((props.delivery_mode,)))
    if props.priority is not None:
        flags |= _PRIORITY
        parts.append(bytes((props.priority,)))
    if props.correlation_id is not None:
        flags |= _CORRELATION_ID
        parts.append(_shortstr(props.correlation_id))
    if props.reply_to is not None:
        flags |= _REPLY_TO
        parts.append(_shortstr(props.reply_to))
    if props.expiration is not None:
        flags |= _EXPIRATION
        parts.append(_shortstr(props.expiration))
    if props.message_id is not None:
        flags |= _MESSAGE_ID
        parts.append(_shortstr(props.message_id))
    if props.timestamp is not None:
        flags |= _TIMESTAMP
        stamp = props.timestamp
        seconds = int(stamp.timestamp()) if isinstance(stamp, _dt.datetime) else stamp
        parts.append(_U64.pack(seconds))
    if props.type is not None:
        flags |= _TYPE
        parts.append(_shortstr(props.type))
    if props.user_id is not None:
        flags |= _USER_ID
        parts.append(_shortstr(props.user_id))
    if props.app_id is not None:
        flags |= _APP_ID
        parts.append(_shortstr(props.app_id))
    return _FLAGS.pack(flags) + b"".join(parts)


def _read_shortstr(data: bytes, pos: int) -> tuple[str, int]:
    end = pos + 1 + data[pos]
    return data[pos + 1 : end].decode(), end


def _timestamp(value: int) -> _dt.datetime:
    # Java and JavaScript publishers write milliseconds; seconds beyond 2^32 (the year 2106)
    # are read as such, as pamqp does.
    if value > 0xFFFFFFFF:
        return _dt.datetime.fromtimestamp(value / 1000, _UTC)
    return _dt.datetime.fromtimestamp(value, _UTC)


def decode_properties(data: bytes, pos: int = 0) -> Properties:
    """Decode a flag word and property list starting at ``data[pos]``.

    A property that does not decode raises (``UnicodeDecodeError`` and other ``ValueError``,
    ``OverflowError``, ``OSError``): see :func:`salvage_properties`.
    """
    (flags,) = _FLAGS.unpack_from(data, pos)
    pos += 2
    if not flags:
        return EMPTY
    word = flags
    while word & 1:  # continuation words: no basic property lives there, skip them
        (word,) = _FLAGS.unpack_from(data, pos)
        pos += 2
    # Only the properties present are stored; the others read the class defaults (None).
    # Skipping the frozen __init__ (13 guarded setattrs) is most of the decoding time saved.
    found: dict[str, Any] = {}
    if flags & _CONTENT_TYPE:
        end = pos + 1 + data[pos]
        found["content_type"] = data[pos + 1 : end].decode()
        pos = end
    if flags & _CONTENT_ENCODING:
        found["content_encoding"], pos = _read_shortstr(data, pos)
    if flags & _HEADERS:
        end = pos + 4 + _U32.unpack_from(data, pos)[0]
        found["headers"] = decode_table(data[pos:end])
        pos = end
    if flags & _DELIVERY_MODE:
        found["delivery_mode"] = data[pos]
        pos += 1
    if flags & _PRIORITY:
        found["priority"] = data[pos]
        pos += 1
    if flags & _CORRELATION_ID:
        found["correlation_id"], pos = _read_shortstr(data, pos)
    if flags & _REPLY_TO:
        found["reply_to"], pos = _read_shortstr(data, pos)
    if flags & _EXPIRATION:
        found["expiration"], pos = _read_shortstr(data, pos)
    if flags & _MESSAGE_ID:
        end = pos + 1 + data[pos]
        found["message_id"] = data[pos + 1 : end].decode()
        pos = end
    if flags & _TIMESTAMP:
        (stamp,) = _U64.unpack_from(data, pos)
        found["timestamp"] = (
            _dt.datetime.fromtimestamp(stamp, _UTC) if stamp <= 0xFFFFFFFF else _timestamp(stamp)
        )
        pos += 8
    if flags & _TYPE:
        found["type"], pos = _read_shortstr(data, pos)
    if flags & _USER_ID:
        found["user_id"], pos = _read_shortstr(data, pos)
    if flags & _APP_ID:
        found["app_id"], pos = _read_shortstr(data, pos)
    props = _new(Properties)
    _set(props, "__dict__", found)
    return props


# The property list in wire order: flag, name, kind (s: short string, o: octet, t: timestamp,
# F: field table). Only the salvaging decoder walks it; the fast one above is unrolled.
_LAYOUT = (
    (_CONTENT_TYPE, "content_type", "s"),
    (_CONTENT_ENCODING, "content_encoding", "s"),
    (_HEADERS, "headers", "F"),
    (_DELIVERY_MODE, "delivery_mode", "o"),
    (_PRIORITY, "priority", "o"),
    (_CORRELATION_ID, "correlation_id", "s"),
    (_REPLY_TO, "reply_to", "s"),
    (_EXPIRATION, "expiration", "s"),
    (_MESSAGE_ID, "message_id", "s"),
    (_TIMESTAMP, "timestamp", "t"),
    (_TYPE, "type", "s"),
    (_USER_ID, "user_id", "s"),
    (_APP_ID, "app_id", "s"),
)

UNDECODABLE_HEADERS = "x-rabbitry-undecodable-headers"
"""Where a salvaged message keeps the raw bytes of a header table that did not decode."""


def salvage_properties(data: bytes, pos: int = 0) -> tuple[Properties, str]:
    """Decode what can be decoded; (properties, the problems found, ``""`` if none).

    Short strings that are not UTF-8 become strings that encode back to the same bytes, a
    timestamp that is no date stays the raw integer, and a header table that does not decode
    is kept whole as bytes under :data:`UNDECODABLE_HEADERS`. Re-encoding the result gives
    the original bytes but for that last case, so a dead-lettered copy is the message as its
    publisher wrote it. A truncated list still raises (``IndexError``, ``struct.error``).
    """
    (flags,) = _FLAGS.unpack_from(data, pos)
    pos += 2
    word = flags
    while word & 1:
        (word,) = _FLAGS.unpack_from(data, pos)
        pos += 2
    found: dict[str, Any] = {}
    problems: list[str] = []
    for flag, name, kind in _LAYOUT:
        if not flags & flag:
            continue
        if kind == "s":
            end = pos + 1 + data[pos]
            if end > len(data):
                raise IndexError(f"{name} runs past the end of the content header")
            raw = data[pos + 1 : end]
            try:
                found[name] = raw.decode()
            except UnicodeDecodeError as exc:
                found[name] = raw.decode("utf-8", "surrogateescape")
                problems.append(f"{name} is not UTF-8 ({exc.reason} at byte {exc.start})")
            pos = end
        elif kind == "o":
            found[name] = data[pos]
            pos += 1
        elif kind == "t":
            (value,) = _U64.unpack_from(data, pos)
            try:
                found[name] = _timestamp(value)
            except (ValueError, OverflowError, OSError):
                found[name] = value
                problems.append(f"timestamp {value} is not a date, in seconds or milliseconds")
            pos += 8
        else:
            end = pos + 4 + _U32.unpack_from(data, pos)[0]
            if end > len(data):
                raise IndexError("the header table runs past the end of the content header")
            raw = data[pos:end]
            try:
                found[name] = decode_table(raw)
            # RecursionError: a table nested thousands deep, which no real publisher sends.
            except (
                ValueError,
                TypeError,
                OverflowError,
                OSError,
                RecursionError,
                struct.error,
            ) as exc:
                found[name] = {UNDECODABLE_HEADERS: raw[4:]}
                problems.append(f"the header table does not decode ({exc})")
            pos = end
    props = _new(Properties)
    _set(props, "__dict__", found)
    return props, "; ".join(problems)
