"""Basic properties one by one, and a Message through the same path a publish and a delivery take.

``tests/unit/test_wire.py`` already checks the all-properties round trip, the empty flag word,
integer timestamps, pamqp compatibility without headers and the over-long short string; these
tests cover each flag bit on its own, reading at an offset, and the envelope's properties.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

import pytest
from pamqp import commands

from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.properties import Properties, decode_properties, encode_properties
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import Message

STAMP = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)

# (our field, its value, pamqp's keyword, AMQP flag bit)
SINGLE = [
    ("content_type", "application/json", "content_type", 0x8000),
    ("content_encoding", "gzip", "content_encoding", 0x4000),
    ("delivery_mode", 2, "delivery_mode", 0x1000),
    ("priority", 9, "priority", 0x0800),
    ("correlation_id", "corr-ü", "correlation_id", 0x0400),
    ("reply_to", "amq.rabbitmq.reply-to", "reply_to", 0x0200),
    ("expiration", "60000", "expiration", 0x0100),
    ("message_id", "m-1", "message_id", 0x0080),
    ("timestamp", STAMP, "timestamp", 0x0040),
    ("type", "order.created", "message_type", 0x0020),
    ("user_id", "guest", "user_id", 0x0010),
    ("app_id", "rabbitry", "app_id", 0x0008),
]


@pytest.mark.parametrize(("name", "value", "pamqp_name", "bit"), SINGLE, ids=lambda v: str(v))
def test_each_property_alone_sets_only_its_flag_and_round_trips(
    name: str, value: Any, pamqp_name: str, bit: int
) -> None:
    encoded = encode_properties(Properties(**{name: value}))
    assert struct.unpack_from(">H", encoded)[0] == bit
    assert encoded == commands.Basic.Properties(**{pamqp_name: value}).marshal()
    decoded = decode_properties(encoded)
    assert decoded == Properties(**{name: value})


def test_headers_alone_set_their_flag_and_keep_their_tags() -> None:
    headers = {"rr_priority": Int64(10), "rr_headers": b"{}", "nested": {"a": [1, "b"]}}
    encoded = encode_properties(Properties(headers=headers))
    assert struct.unpack_from(">H", encoded)[0] == 0x2000
    assert decode_properties(encoded).headers == {
        "rr_priority": 10,
        "rr_headers": bytearray(b"{}"),
        "nested": {"a": [1, "b"]},
    }


def test_empty_headers_table_is_not_the_same_as_no_headers() -> None:
    encoded = encode_properties(Properties(headers={}))
    assert encoded == b"\x20\x00" + b"\x00\x00\x00\x00"
    assert decode_properties(encoded).headers == {}


def test_decoding_starts_at_the_given_offset() -> None:
    props = Properties(content_type="a/b", message_id="m-2", timestamp=STAMP)
    assert decode_properties(b"\xde\xad\xbe\xef" + encode_properties(props), 4) == props


def test_a_continuation_flag_word_is_skipped() -> None:
    data = struct.pack(">HH", 0x8001, 0x0000) + b"\x03a/b"
    assert decode_properties(data) == Properties(content_type="a/b")


def test_timestamp_in_another_zone_is_the_same_instant_in_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    decoded = decode_properties(encode_properties(Properties(timestamp=STAMP.astimezone(paris))))
    assert decoded.timestamp == STAMP
    assert isinstance(decoded.timestamp, dt.datetime)
    assert decoded.timestamp.tzinfo is dt.UTC


def test_short_string_of_exactly_255_bytes_is_accepted() -> None:
    value = "é" * 127 + "x"  # 255 bytes of UTF-8
    assert decode_properties(encode_properties(Properties(app_id=value))).app_id == value


def test_multibyte_short_string_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        encode_properties(Properties(type="é" * 128))


@pytest.mark.parametrize(
    "props", [Properties(priority=256), Properties(delivery_mode=256)], ids=["priority", "mode"]
)
def test_octet_properties_out_of_range_are_refused(props: Properties) -> None:
    with pytest.raises(ValueError):
        encode_properties(props)


def test_envelope_message_survives_the_wire_properties() -> None:
    sent = Message(
        type="App\\Jobs\\SendEmail",
        payload={"to": "a@example.com"},
        pipeline="emails",
        headers={"attempts": ("0",)},
        delay=5,
        tenant="acme",
        correlation_id="corr-1",
        timestamp=STAMP,
    )
    props, body = envelope.encode(sent)
    received_props = decode_properties(encode_properties(Properties(**props)))
    assert received_props.delivery_mode == 2
    assert received_props.message_id == sent.id
    assert received_props.timestamp == STAMP
    received = envelope.decode(
        body,
        received_props.headers,
        message_id=received_props.message_id,
        timestamp=received_props.timestamp,
        correlation_id=received_props.correlation_id,
    )
    assert (received.type, received.id, received.payload) == (sent.type, sent.id, sent.payload)
    assert (received.headers, received.pipeline, received.delay) == (
        {"attempts": ("0",)},
        "emails",
        5,
    )
    assert (received.tenant, received.correlation_id, received.timestamp) == (
        "acme",
        "corr-1",
        STAMP,
    )
