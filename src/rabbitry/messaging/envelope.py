"""Rabbitry messages <-> AMQP properties, headers and body, in RoadRunner's format. Pure, no I/O.

Encoding follows the publisher rules of RoadRunner's AMQP driver to the letter (see
``docs/message-format.md``): the seven ``rr_*`` headers come first, in RoadRunner's own order
and with its exact field types: ``rr_id``/``rr_job``/``rr_pipeline`` as ``S``, ``rr_headers`` as a
byte array ``x`` holding a JSON object of string lists (``{}`` when empty, never ``null``),
``rr_delay``/``rr_priority`` as signed int64 ``l`` (the only width every RoadRunner accepts),
``rr_auto_ack`` as ``t``. Decoding is lenient the way RoadRunner's consumer is: any integer
width, ``rr_headers`` as bytes, string or null, ``rr_auto_ack`` missing, unknown extra headers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rabbitry.amqp.base import Received
from rabbitry.amqp.fieldtable import EncodedTable, Int64, encode_fields
from rabbitry.errors import MessageError

CONTENT_TYPE = "application/json"
PERSISTENT = 2
DEFAULT_PRIORITY = 10
# The job name RoadRunner gives a message that carries no rr_job; we use the same for lenient
# consumers so both sides log the same thing.
UNKNOWN_JOB = "deduced_by_rr"

TENANT_HEADER = "x-tenant"
CORRELATION_HEADER = "x-correlation-id"
TRACEPARENT_HEADER = "traceparent"
ATTEMPT_HEADER = "x-rabbitry-attempt"
REASON_HEADER = "x-rabbitry-reason"
ERROR_HEADER = "x-rabbitry-error"
ORIGIN_QUEUE_HEADER = "x-rabbitry-queue"

RR_HEADERS = (
    "rr_id",
    "rr_job",
    "rr_pipeline",
    "rr_headers",
    "rr_delay",
    "rr_priority",
    "rr_auto_ack",
)

Json = Any

_RR_NAMES = frozenset(RR_HEADERS)
_LENGTH = struct.Struct(">I")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Message:
    """One message: a type (RoadRunner's job name), a JSON payload and its metadata.

    ``headers`` are the application headers RoadRunner hands to PHP (``rr_headers``): a map of
    string lists. ``tenant``, ``correlation_id`` and ``traceparent`` travel as top-level AMQP
    headers, which RoadRunner >= 2023.3 also passes to PHP. ``attempt`` counts Rabbitry's retries.
    """

    type: str
    payload: Json
    id: str = field(default_factory=lambda: new_id())
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pipeline: str = ""
    delay: int = 0
    priority: int = DEFAULT_PRIORITY
    auto_ack: bool = False
    tenant: str | None = None
    correlation_id: str | None = None
    traceparent: str | None = None
    timestamp: dt.datetime = field(default_factory=_now)
    attempt: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The body exactly as received or as first encoded; re-publishing sends these bytes again.
    raw_body: bytes | None = None
    # Where a consumed message came from; not encoded (the broker reports it on delivery).
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False
    queue: str = ""  # the queue it was consumed from (its consumer knows it)

    def body(self) -> bytes:
        """The body bytes: the original ones when known, else compact UTF-8 JSON."""
        if self.raw_body is not None:
            return self.raw_body
        return encode_body(self.payload)


# One encoder for every body: json.dumps with options builds a new one per call (~0.7 µs).
def _jsonable(value: Any) -> Any:
    """The encoder's ``default``: a pydantic model or a dataclass instance as plain JSON
    values (called only for what JSON cannot encode, so plain payloads pay nothing)."""
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        from pydantic_core import to_jsonable_python  # dates, UUIDs, models nested inside

        return to_jsonable_python(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_jsonable)


def content_id(job: str, timestamp: dt.datetime | int | None, body: bytes) -> str:
    """The id of a message that carries none (neither ``rr_id`` nor ``message_id``).

    Derived from what the publisher sent (type, AMQP timestamp, body bytes) and not drawn at
    random, so that every redelivery of the message gets the same id and consumers that
    deduplicate on ``Message.id`` (the event store) keep it once. Two messages sent with equal
    type, timestamp and body are indistinguishable without an id, and count as one.
    """
    stamp = timestamp.isoformat() if isinstance(timestamp, dt.datetime) else str(timestamp or "")
    digest = hashlib.sha256(b"\0".join((job.encode(), stamp.encode(), body))).hexdigest()
    return f"sha256:{digest[:32]}"


def new_id() -> str:
    """A version 7 UUID as text (RFC 9562): the Unix time in milliseconds, then 74 random
    bits. Every published message gets one.

    Time first, so that the ids a system makes one after another sort together: the unique
    indexes on message ids (the event store, the outbox, the message log, the chat history)
    take each new one at their right-hand end instead of at a random page. With random
    (version 4) ids the event store's PostgreSQL CPU per event grew with the table, measured
    8 to 13.5 us over 160,000 events, against 7.5 to 10.5 with these (docs/performance.md).
    To a reader it is still a UUID string, as RoadRunner's job ids are."""
    bits = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    bits = bits & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x7000 << 64) | (0x8000 << 48)
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def encode_body(payload: Json) -> bytes:
    """Compact UTF-8 JSON, the form PHP's ``json_decode`` and RoadRunner expect.

    A pydantic model or a dataclass instance (also nested) is encoded as its fields."""
    try:
        return _JSON.encode(payload).encode()
    except (TypeError, ValueError) as exc:
        raise MessageError(f"payload is not JSON-serialisable: {exc}") from exc


def encode_headers(message: Message) -> dict[str, Any]:
    """The AMQP header table of ``message``, rr_* first, typed for :mod:`fieldtable`."""
    if message.headers:
        # A bare string is one value, not a list of characters.
        user_headers = {
            name: [values] if isinstance(values, str) else list(values)
            for name, values in message.headers.items()
        }
        encoded = json.dumps(user_headers, separators=(",", ":")).encode()
    else:
        encoded = b"{}"  # most messages: no need to ask json
    headers: dict[str, Any] = {
        "rr_id": message.id,
        "rr_job": message.type,
        "rr_pipeline": message.pipeline,
        "rr_headers": encoded,
        "rr_delay": Int64(message.delay),
        "rr_priority": Int64(message.priority),
        "rr_auto_ack": message.auto_ack,
    }
    if message.tenant is not None:
        headers[TENANT_HEADER] = message.tenant
    if message.correlation_id is not None:
        headers[CORRELATION_HEADER] = message.correlation_id
    if message.traceparent is not None:
        headers[TRACEPARENT_HEADER] = message.traceparent
    if message.attempt:
        headers[ATTEMPT_HEADER] = Int64(message.attempt)
    for name, value in message.extra.items():
        headers.setdefault(name, value)
    return headers


def _header_table(message: Message) -> EncodedTable:
    """:func:`encode_headers`, with its encoding: only ``rr_id`` and the extras are encoded
    per message; the other six ``rr_*`` fields repeat from one message to the next."""
    headers = encode_headers(message)
    encoded = encode_fields({"rr_id": message.id}) + _rr_fields(
        message.type,
        message.pipeline,
        headers["rr_headers"],
        message.delay,
        message.priority,
        message.auto_ack,
    )
    if len(headers) > len(RR_HEADERS):
        encoded += encode_fields({k: v for k, v in headers.items() if k not in _RR_NAMES})
    return EncodedTable(headers, _LENGTH.pack(len(encoded)) + encoded)


@functools.lru_cache(maxsize=512)
def _rr_fields(
    job: str, pipeline: str, user_headers: bytes, delay: int, priority: int, auto_ack: bool
) -> bytes:
    return encode_fields(
        {
            "rr_job": job,
            "rr_pipeline": pipeline,
            "rr_headers": user_headers,
            "rr_delay": Int64(delay),
            "rr_priority": Int64(priority),
            "rr_auto_ack": auto_ack,
        }
    )


def encode(message: Message) -> tuple[dict[str, Any], bytes]:
    """Return (basic properties as keyword arguments, body bytes) for ``message``."""
    return encode_properties(message), message.body()


def encode_properties(message: Message) -> dict[str, Any]:
    """The basic properties of ``message`` as keyword arguments (its body aside)."""
    properties: dict[str, Any] = {
        "content_type": CONTENT_TYPE,
        "delivery_mode": PERSISTENT,
        "message_id": message.id,
        "timestamp": message.timestamp,
        "headers": _header_table(message),
    }
    if message.correlation_id is not None:
        properties["correlation_id"] = message.correlation_id
    return properties


def decode(
    body: bytes,
    headers: Mapping[str, Any] | None,
    *,
    message_id: str | None = None,
    timestamp: dt.datetime | int | None = None,
    correlation_id: str | None = None,
    strict: bool = True,
    exchange: str = "",
    routing_key: str = "",
    redelivered: bool = False,
    queue: str = "",
) -> Message:
    """Build a :class:`Message` from what the broker delivered.

    Raises :class:`MessageError` (the reason becomes the dead-letter reason) when the body is not
    UTF-8 JSON, or, with ``strict``, when ``rr_job`` is missing.
    """
    table: Mapping[str, Any] = headers or {}
    get = table.get
    job = _text(get("rr_job"))
    if not job:
        if strict:
            raise MessageError("missing rr_job header (the message type)")
        job = UNKNOWN_JOB
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MessageError(f"body is not UTF-8: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise MessageError(f"body is not JSON: {exc}") from exc
    rr_id = _text(get("rr_id")) or message_id or content_id(job, timestamp, body)
    extra = {k: v for k, v in table.items() if k not in _KNOWN}
    return Message(
        type=job,
        payload=payload,
        id=rr_id,
        headers=_user_headers(get("rr_headers")),
        pipeline=_text(get("rr_pipeline")) or "",
        delay=_int(get("rr_delay"), 0),
        priority=_int(get("rr_priority"), DEFAULT_PRIORITY),
        auto_ack=get("rr_auto_ack") is True,
        tenant=_text(get(TENANT_HEADER)),
        correlation_id=_text(get(CORRELATION_HEADER)) or correlation_id,
        traceparent=_text(get(TRACEPARENT_HEADER)),
        timestamp=_timestamp(timestamp),
        attempt=_int(get(ATTEMPT_HEADER), 0),
        extra=extra,
        raw_body=bytes(body),
        exchange=exchange,
        routing_key=routing_key,
        redelivered=redelivered,
        queue=queue,
    )


def decode_received(delivery: Received, *, strict: bool, queue: str = "") -> Message:
    """The :class:`Message` a consumer received: :func:`decode` of its body and properties,
    with where it came from. Raises :class:`MessageError` as :func:`decode` does, and when
    the delivery's properties did not decode (``delivery.error``)."""
    if delivery.error is not None:
        raise MessageError(f"undecodable delivery: {delivery.error}")
    props = delivery.properties
    return decode(
        delivery.body,
        props.headers,
        message_id=props.message_id,
        timestamp=props.timestamp,
        correlation_id=props.correlation_id,
        exchange=delivery.exchange,
        routing_key=delivery.routing_key,
        redelivered=delivery.redelivered,
        strict=strict,
        queue=queue,
    )


_KNOWN = frozenset(RR_HEADERS) | {
    TENANT_HEADER,
    CORRELATION_HEADER,
    TRACEPARENT_HEADER,
    ATTEMPT_HEADER,
}


def _text(value: Any) -> str | None:
    if type(value) is str:
        return value
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value)


def _int(value: Any, default: int) -> int:
    # RoadRunner <= 2024.1 writes `l`, >= 2024.2 writes `I`, stock clients write anything:
    # every integer tag decodes to int already, so only non-integers fall back to the default.
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value


def _user_headers(value: Any) -> dict[str, tuple[str, ...]]:
    """``rr_headers``: JSON object of string lists as bytes or string; null and junk give {}."""
    if value == b"{}" or value == "{}":  # what Rabbitry and RoadRunner send without headers
        return {}
    text = _text(value)
    if not text:
        return {}
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        # RoadRunner >= 2023.3 logs a warning and runs the job without these headers.
        return {}
    if not isinstance(loaded, dict):
        return {}
    result: dict[str, tuple[str, ...]] = {}
    for name, values in loaded.items():
        if str(name).startswith("rr_"):
            continue
        if isinstance(values, list):
            result[str(name)] = tuple(str(v) for v in values)
        elif values is not None:
            result[str(name)] = (str(values),)
    return result


def _timestamp(value: dt.datetime | int | None) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    return _now()
