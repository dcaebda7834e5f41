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


def _shortstr(value: str) -> bytes:
    raw = value.encode()
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


def decode_properties(data: bytes, pos: int = 0) -> Properties:
    """Decode a flag word and property list starting at ``data[pos]``."""
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
        found["content_type"], pos = _read_shortstr(data, pos)
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
        found["message_id"], pos = _read_shortstr(data, pos)
    if flags & _TIMESTAMP:
        found["timestamp"] = _dt.datetime.fromtimestamp(_U64.unpack_from(data, pos)[0], _UTC)
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
