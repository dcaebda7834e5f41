"""AMQP 0-9-1 frames for :class:`~rabbitry.amqp.link.Link`: build and parse, no I/O.

Control methods (connection and channel setup, qos, consume, cancel) are rare and go through
pamqp. The per-message methods are the hot path: a publish is three frames and a settle one, and
pamqp spends ~15 µs on each publish, so those are packed here with ``struct`` from precomputed
prefixes, and deliveries, confirms and returns are parsed the same way.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pamqp import base, commands
from pamqp import frame as _pamqp_frame

from rabbitry.amqp.properties import Properties, decode_properties, salvage_properties

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8  # 7-byte frame header + frame-end octet

# Method ids as pamqp indexes them: class id << 16 | method id.
BASIC_RETURN = 0x003C0032
BASIC_DELIVER = 0x003C003C
BASIC_ACK = 0x003C0050
BASIC_NACK = 0x003C0078

Frame = tuple[int, int, bytes]
"""One frame as read: (frame type, channel, payload without header and frame-end)."""

_FRAME_HEAD = struct.Struct(">BHI")
_CONTENT_HEAD = struct.Struct(">BHIHHQ")  # frame head, class id, weight, body size
_METHOD_ID = struct.Struct(">I")
_TAG_BITS = struct.Struct(">QB")
_RETURN_CODE = struct.Struct(">H")
_BODY_SIZE = struct.Struct(">Q")
# Whole settle frames: head, class 60, method, delivery tag, bits, frame-end.
_SETTLE = struct.Struct(">BHIHHQBB")


class FrameError(ValueError):
    """The peer sent bytes that are not a well-formed AMQP 0-9-1 frame."""


class HeaderTooLarge(ValueError):
    """A message whose content header does not fit in one frame of this connection (nothing
    of it was written)."""


# --- control methods (pamqp) -------------------------------------------------------------


def method_frame(channel: int, method: base.Frame) -> bytes:
    """Marshal a control method frame with pamqp."""
    return _pamqp_frame.marshal(method, channel)


def method_id(payload: bytes) -> int:
    """The ``class << 16 | method`` id at the start of a method frame's payload."""
    return int(_METHOD_ID.unpack_from(payload)[0])


def decode_method(payload: bytes) -> base.Frame:
    """Decode a method frame's payload with pamqp (for the rare, non-hot-path methods)."""
    index = method_id(payload)
    try:
        method: base.Frame = commands.INDEX_MAPPING[index]()
    except KeyError:
        raise FrameError(f"unknown method id 0x{index:08x}") from None
    try:
        method.unmarshal(payload[4:])
    except (struct.error, ValueError) as exc:
        raise FrameError(f"malformed {method.name}: {exc}") from exc
    return method


# --- hot path: publish and settle ---------------------------------------------------------


def _shortstr(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


@lru_cache(maxsize=1024)
def _publish_method(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    # Publishers reuse a handful of (exchange, routing key) pairs, so the method frame is cached.
    payload = (
        b"\x00\x3c\x00\x28\x00\x00"  # Basic.Publish, reserved ticket
        + _shortstr(exchange)
        + _shortstr(routing_key)
        + (b"\x01" if mandatory else b"\x00")
    )
    return _FRAME_HEAD.pack(FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: bytes,
    *,
    mandatory: bool,
    frame_max: int,
) -> list[bytes]:
    """Pieces of a Basic.Publish + content header + body frames, ready to be joined and written.

    ``properties`` is the output of :func:`~rabbitry.amqp.properties.encode_properties`;
    callers publishing many messages with one :class:`Properties` encode it once. The body is
    split so that no frame exceeds ``frame_max``.
    """
    size = len(body)
    chunk = frame_max - FRAME_OVERHEAD
    header_size = 12 + len(properties)
    if header_size > chunk:
        # The content header cannot be split: the broker would close the connection (501).
        raise HeaderTooLarge(
            f"its properties and headers take {header_size} bytes; the broker's frame_max"
            f" allows {chunk}"
        )
    parts = [
        _publish_method(channel, exchange, routing_key, mandatory),
        _CONTENT_HEAD.pack(FRAME_HEADER, channel, header_size, 60, 0, size),
        properties,
    ]
    if size <= chunk:
        if size:
            parts.append(b"\xce" + _FRAME_HEAD.pack(FRAME_BODY, channel, size))
            parts.append(body)
        parts.append(b"\xce")
        return parts
    parts.append(b"\xce")
    view = memoryview(body)
    for start in range(0, size, chunk):
        piece = view[start : start + chunk]
        parts.append(_FRAME_HEAD.pack(FRAME_BODY, channel, len(piece)))
        parts.append(bytes(piece))
        parts.append(b"\xce")
    return parts


def encode_ack(channel: int, delivery_tag: int, *, multiple: bool = False) -> bytes:
    """A Basic.Ack frame."""
    return _SETTLE.pack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, multiple, FRAME_END)


def encode_nack(
    channel: int, delivery_tag: int, *, multiple: bool = False, requeue: bool = True
) -> bytes:
    """A Basic.Nack frame."""
    bits = multiple | (requeue << 1)
    return _SETTLE.pack(FRAME_METHOD, channel, 13, 60, 120, delivery_tag, bits, FRAME_END)


def encode_reject(channel: int, delivery_tag: int, *, requeue: bool = True) -> bytes:
    """A Basic.Reject frame."""
    return _SETTLE.pack(FRAME_METHOD, channel, 13, 60, 90, delivery_tag, requeue, FRAME_END)


# --- reading ------------------------------------------------------------------------------


_FRAME_TYPES = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})


def split_frames(buffer: bytearray, frame_max: int = 0) -> list[Frame]:
    """Remove every complete frame from the front of ``buffer`` and return them in order.

    An incomplete trailing frame stays in ``buffer`` for the next read. A frame larger than
    ``frame_max`` (when given) or of an unknown type is a :class:`FrameError`.
    """
    total = len(buffer)
    if total < 7:
        return []
    # Nothing is copied until the first frame is whole: a 128 KB body frame arriving in 4 KB
    # reads would otherwise copy the growing buffer on every read, quadratic in its size.
    _check_head(buffer, 0, frame_max)
    if total < 8 + _FRAME_HEAD.unpack_from(buffer, 0)[2]:
        return []
    frames: list[Frame] = []
    append = frames.append
    unpack = _FRAME_HEAD.unpack_from
    # One copy of the whole read, then bytes slices: cheaper than a memoryview slice per frame.
    data = bytes(buffer)
    pos = 0
    while total - pos >= 7:
        frame_type, channel, size = unpack(data, pos)
        if frame_type not in _FRAME_TYPES or (frame_max and size > frame_max - FRAME_OVERHEAD):
            _check_head(data, pos, frame_max)
        end = pos + 7 + size
        if end >= total:
            break
        if data[end] != FRAME_END:
            raise FrameError(f"frame-end octet missing at offset {end}")
        append((frame_type, channel, data[pos + 7 : end]))
        pos = end + 1
    if pos:
        del buffer[:pos]
    return frames


def _check_head(data: bytes | bytearray, pos: int, frame_max: int) -> None:
    frame_type, _, size = _FRAME_HEAD.unpack_from(data, pos)
    if frame_type not in _FRAME_TYPES:
        if data[pos : pos + 4] == b"AMQP":
            raise FrameError("the broker refused AMQP 0-9-1 (sent its protocol header)")
        raise FrameError(f"unknown frame type {frame_type}")
    if frame_max and size > frame_max - FRAME_OVERHEAD:
        raise FrameError(f"a frame of {size + FRAME_OVERHEAD} bytes exceeds frame_max {frame_max}")


def parse_deliver(payload: bytes, errors: str = "strict") -> tuple[str, int, bool, str, str]:
    """Basic.Deliver: (consumer tag, delivery tag, redelivered, exchange, routing key).

    Names that are not UTF-8 raise ``UnicodeDecodeError``; with ``errors="surrogateescape"``
    they decode to strings that encode back to the same bytes.
    """
    end = 5 + payload[4]
    consumer_tag = payload[5:end].decode("utf-8", errors)
    delivery_tag, redelivered = _TAG_BITS.unpack_from(payload, end)
    pos = end + 9
    end = pos + 1 + payload[pos]
    exchange = payload[pos + 1 : end].decode("utf-8", errors)
    routing_key = payload[end + 1 : end + 1 + payload[end]].decode("utf-8", errors)
    return consumer_tag, delivery_tag, bool(redelivered), exchange, routing_key


def parse_confirm(payload: bytes) -> tuple[int, bool, bool]:
    """Basic.Ack or Basic.Nack from the broker: (delivery tag, multiple, requeue)."""
    delivery_tag, bits = _TAG_BITS.unpack_from(payload, 4)
    return delivery_tag, bool(bits & 1), bool(bits & 2)


def parse_return(payload: bytes) -> tuple[int, str, str, str]:
    """Basic.Return: (reply code, reply text, exchange, routing key)."""
    (code,) = _RETURN_CODE.unpack_from(payload, 4)
    pos = 6
    fields: list[str] = []
    for _ in range(3):
        end = pos + 1 + payload[pos]
        fields.append(payload[pos + 1 : end].decode("utf-8", "surrogateescape"))
        pos = end
    return code, fields[0], fields[1], fields[2]


def body_size(payload: bytes) -> int:
    """The body size a content header announces."""
    if len(payload) < 14:
        raise FrameError(f"content header of {len(payload)} bytes is too short")
    return int(_BODY_SIZE.unpack_from(payload, 4)[0])


def parse_content_header(payload: bytes) -> tuple[int, Properties]:
    """Content header: (body size, properties).

    Properties a foreign publisher wrote that do not decode (a short string that is not
    UTF-8, a timestamp out of any range, a malformed header table) raise ``ValueError``,
    ``OverflowError`` or ``OSError``; :func:`salvage_content_header` reads them anyway.
    """
    return body_size(payload), decode_properties(payload, 12)


def salvage_content_header(payload: bytes) -> tuple[int, Properties, str]:
    """Content header whose properties did not decode: (body size, what could be read, why)."""
    try:
        properties, problem = salvage_properties(payload, 12)
    except (IndexError, struct.error) as exc:
        raise FrameError(f"malformed content header: {exc}") from exc
    return body_size(payload), properties, problem
