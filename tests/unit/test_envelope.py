"""RoadRunner-compatible envelope: examples E1-E5 and M1-M7 of docs/message-format.md.

Raw header tables are built here byte by byte, with the exact type tags RoadRunner and stock
clients write, then decoded the way a delivery is: ``decode_table`` then ``envelope.decode``.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from decimal import Decimal
from typing import Any

import pytest

from rabbitry.amqp.base import Received
from rabbitry.amqp.fieldtable import Int64, decode_table, encode_table, encode_value
from rabbitry.amqp.properties import Properties
from rabbitry.errors import MessageError
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import Message

E1_ID = "0b6f2a64-6d0e-4a8a-9c55-7a5b3f3c2b11"
E1_JOB = "App\\Jobs\\SendEmail"
E1_BODY = b'{"to":"a@example.com","template":"welcome"}'
# The note's 191-byte table (E1 with rr_headers={"attempts":["0"]}), uuid left as a slot.
E1_TABLE_HEX = (
    "000000bb 05 72725f6964 53 00000024 {uuid} 06 72725f6a6f62 53 00000012"
    " 4170705c4a6f62735c53656e64456d61696c 0b 72725f706970656c696e65 53 00000006 656d61696c73"
    " 0a 72725f68656164657273 78 00000012 7b22617474656d707473223a5b2230225d7d"
    " 08 72725f64656c6179 6c 0000000000000000 0b 72725f7072696f72697479 6c 000000000000000a"
    " 0b 72725f6175746f5f61636b 74 00"
)
DELAYED_QUEUE = "delayed-60000.amqp.default.emails-queue"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# --- hand-made field tables ---------------------------------------------------------------

_INT_FORMATS = {b"b": ">b", b"B": ">B", b"s": ">h", b"u": ">H", b"I": ">i", b"i": ">I", b"l": ">q"}


def _long(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _field(name: str, tag: bytes, value: bytes) -> bytes:
    key = name.encode()
    return bytes((len(key),)) + key + tag + value


def s_field(name: str, text: str) -> bytes:
    return _field(name, b"S", _long(text.encode()))


def x_field(name: str, raw: bytes) -> bytes:
    return _field(name, b"x", _long(raw))


def int_field(name: str, tag: bytes, value: int) -> bytes:
    return _field(name, tag, struct.pack(_INT_FORMATS[tag], value))


def t_field(name: str, value: bool) -> bytes:
    return _field(name, b"t", b"\x01" if value else b"\x00")


def table(*fields: bytes) -> bytes:
    return _long(b"".join(fields))


def e1_fields(
    *,
    delay: tuple[bytes, int] = (b"l", 0),
    priority: tuple[bytes, int] = (b"l", 10),
    rr_headers: bytes = b"{}",
    auto_ack: bool | None = False,
) -> list[bytes]:
    fields = [
        s_field("rr_id", E1_ID),
        s_field("rr_job", E1_JOB),
        s_field("rr_pipeline", "emails"),
        x_field("rr_headers", rr_headers),
        int_field("rr_delay", *delay),
        int_field("rr_priority", *priority),
    ]
    if auto_ack is not None:
        fields.append(t_field("rr_auto_ack", auto_ack))
    return fields


def deliver(*fields: bytes, body: bytes = E1_BODY, **kwargs: Any) -> Message:
    """What a consumer gets for a delivery with these header fields."""
    return envelope.decode(body, decode_table(table(*fields)), **kwargs)


def walk(encoded: bytes) -> dict[str, tuple[str, bytes]]:
    """Read our own tags (S, x, l, t) straight off the wire: name -> (tag, value bytes)."""
    (length,) = struct.unpack_from(">I", encoded)
    assert length == len(encoded) - 4
    sizes = {b"l": 8, b"t": 1}
    pos, out = 4, {}
    while pos < len(encoded):
        size = encoded[pos]
        name = encoded[pos + 1 : pos + 1 + size].decode()
        pos += 1 + size
        tag = encoded[pos : pos + 1]
        pos += 1
        if tag in (b"S", b"x"):
            (length,) = struct.unpack_from(">I", encoded, pos)
            pos += 4
        else:
            length = sizes[tag]
        out[name] = (tag.decode(), encoded[pos : pos + length])
        pos += length
    return out


def e1_message(**changes: Any) -> Message:
    fields: dict[str, Any] = {
        "type": E1_JOB,
        "payload": json.loads(E1_BODY),
        "id": E1_ID,
        "pipeline": "emails",
        "headers": {"attempts": ("0",)},
    }
    fields.update(changes)
    return Message(**fields)


# --- encoding: what RoadRunner receives -----------------------------------------------------


def test_e1_header_table_is_the_notes_191_bytes() -> None:
    expected = bytes.fromhex(E1_TABLE_HEX.format(uuid=E1_ID.encode().hex()).replace(" ", ""))
    assert len(expected) == 191
    assert encode_table(envelope.encode_headers(e1_message())) == expected


def test_rr_headers_carry_roadrunners_type_tags() -> None:
    message = e1_message(delay=60, priority=1, auto_ack=True)
    fields = walk(encode_table(envelope.encode_headers(message)))
    assert fields["rr_id"] == ("S", E1_ID.encode())
    assert fields["rr_job"] == ("S", E1_JOB.encode())
    assert fields["rr_pipeline"] == ("S", b"emails")
    assert fields["rr_headers"] == ("x", b'{"attempts":["0"]}')
    assert fields["rr_delay"] == ("l", struct.pack(">q", 60))
    assert fields["rr_priority"] == ("l", struct.pack(">q", 1))
    assert fields["rr_auto_ack"] == ("t", b"\x01")


@pytest.mark.parametrize("value", [0, 1, 10, 255, 70_000, 2**31, 2**40])
def test_delay_and_priority_are_nine_byte_int64_whatever_their_size(value: int) -> None:
    headers = envelope.encode_headers(Message(type="t", payload=None, delay=value, priority=value))
    for name in ("rr_delay", "rr_priority"):
        encoded = encode_value(headers[name])
        assert encoded == b"\x6c" + struct.pack(">q", value)
        assert len(encoded) == 9


def test_no_user_headers_send_an_empty_json_object_never_null() -> None:
    fields = walk(encode_table(envelope.encode_headers(Message(type="t", payload={}))))
    assert fields["rr_headers"] == ("x", b"{}")


def test_rr_headers_is_a_json_object_of_string_lists() -> None:
    message = Message(type="t", payload={}, headers={"a": ("1", "2"), "payload_class": ("X\\Y",)})
    raw = envelope.encode_headers(message)["rr_headers"]
    assert isinstance(raw, bytes)
    assert json.loads(raw) == {"a": ["1", "2"], "payload_class": ["X\\Y"]}


def test_auto_ack_defaults_to_false_on_the_wire() -> None:
    fields = walk(encode_table(envelope.encode_headers(Message(type="t", payload={}))))
    assert fields["rr_auto_ack"] == ("t", b"\x00")


def test_rr_headers_come_first_in_roadrunners_order() -> None:
    message = e1_message(tenant="acme", correlation_id="c-1", traceparent=TRACEPARENT, attempt=2)
    assert tuple(envelope.encode_headers(message))[:7] == envelope.RR_HEADERS


def test_tenant_correlation_traceparent_and_attempt_are_top_level_headers() -> None:
    message = e1_message(tenant="acme", correlation_id="c-1", traceparent=TRACEPARENT, attempt=2)
    fields = walk(encode_table(envelope.encode_headers(message)))
    assert fields["x-tenant"] == ("S", b"acme")
    assert fields["x-correlation-id"] == ("S", b"c-1")
    assert fields["traceparent"] == ("S", TRACEPARENT.encode())
    assert fields["x-rabbitry-attempt"] == ("l", struct.pack(">q", 2))


def test_optional_headers_are_absent_when_unset() -> None:
    headers = envelope.encode_headers(e1_message())
    assert set(headers) == set(envelope.RR_HEADERS)


def test_extra_headers_never_replace_rr_headers() -> None:
    message = e1_message(extra={"rr_id": "forged", "rr_job": "Other", "x-custom": "v"})
    headers = envelope.encode_headers(message)
    assert headers["rr_id"] == E1_ID
    assert headers["rr_job"] == E1_JOB
    assert headers["x-custom"] == "v"


def test_encode_sets_persistent_properties_and_the_body() -> None:
    stamp = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    properties, body = envelope.encode(e1_message(timestamp=stamp, correlation_id="c-9"))
    assert properties["delivery_mode"] == 2
    assert properties["content_type"] == envelope.CONTENT_TYPE == "application/json"
    assert properties["message_id"] == E1_ID
    assert properties["timestamp"] == stamp
    assert properties["correlation_id"] == "c-9"
    assert properties["headers"] == envelope.encode_headers(e1_message(correlation_id="c-9"))
    assert body == E1_BODY


def test_encode_leaves_correlation_id_out_when_unset() -> None:
    properties, _ = envelope.encode(e1_message())
    assert "correlation_id" not in properties


def test_unserialisable_payload_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="JSON"):
        envelope.encode(Message(type="t", payload={"when": dt.date(2024, 1, 1)}))


def test_body_is_compact_utf8_json() -> None:
    assert Message(type="t", payload={"name": "Zoë", "n": [1, 2]}).body() == (
        '{"name":"Zoë","n":[1,2]}'.encode()
    )


# --- decoding: what RoadRunner and third parties send ----------------------------------------


def test_e1_decodes_as_written() -> None:
    message = deliver(*e1_fields(rr_headers=b'{"attempts":["0"]}'))
    assert message.type == E1_JOB
    assert message.id == E1_ID
    assert message.pipeline == "emails"
    assert message.headers == {"attempts": ("0",)}
    assert (message.delay, message.priority, message.auto_ack) == (0, 10, False)
    assert message.payload == {"to": "a@example.com", "template": "welcome"}


def test_e2_rr_delay_as_int32_in_any_field_order_with_trace_keys() -> None:
    fields = e1_fields(
        delay=(b"I", 0), rr_headers=b'{"Traceparent":["00-4bf9-00f0-01"]}', auto_ack=None
    )
    fields.reverse()
    message = deliver(*fields, t_field("rr_auto_ack", False))
    assert message.type == E1_JOB
    assert message.id == E1_ID
    assert message.delay == 0
    assert message.priority == 10
    assert message.headers == {"Traceparent": ("00-4bf9-00f0-01",)}


@pytest.mark.parametrize("tag", [b"b", b"s", b"I", b"l", b"u", b"i", b"B"])
def test_delay_and_priority_accept_every_integer_width(tag: bytes) -> None:
    message = deliver(*e1_fields(delay=(tag, 5), priority=(tag, 7)))
    assert (message.delay, message.priority) == (5, 7)


def test_e3_delayed_job_with_dead_letter_headers() -> None:
    rr_headers = b'{"attempts":["0"],"payload_class":["App\\\\Dto\\\\ReportRequest"]}'
    died = dt.datetime(2024, 5, 1, 12, 31, tzinfo=dt.UTC)
    death = table(
        int_field("count", b"l", 1),
        s_field("reason", "expired"),
        s_field("queue", DELAYED_QUEUE),
        _field("time", b"T", struct.pack(">Q", int(died.timestamp()))),
        s_field("exchange", "amqp.default"),
        _field("routing-keys", b"A", _long(b"S" + _long(DELAYED_QUEUE.encode()))),
    )
    message = deliver(
        s_field("rr_id", E1_ID),
        s_field("rr_job", "App\\Jobs\\Report"),
        s_field("rr_pipeline", "emails"),
        x_field("rr_headers", rr_headers),
        int_field("rr_delay", b"l", 60),
        int_field("rr_priority", b"l", 10),
        t_field("rr_auto_ack", True),
        _field("x-death", b"A", _long(b"F" + death)),
        s_field("x-first-death-exchange", "amqp.default"),
        s_field("x-first-death-queue", DELAYED_QUEUE),
        s_field("x-first-death-reason", "expired"),
        body=b'{"reportId":42}',
    )
    assert message.type == "App\\Jobs\\Report"
    assert message.auto_ack is True
    assert message.delay == 60
    assert message.headers == {
        "attempts": ("0",),
        "payload_class": ("App\\Dto\\ReportRequest",),
    }
    assert message.payload == {"reportId": 42}
    (first,) = message.extra["x-death"]
    assert first["count"] == 1
    assert first["reason"] == "expired"
    assert first["time"] == died
    assert first["routing-keys"] == [DELAYED_QUEUE]
    assert message.extra["x-first-death-queue"] == DELAYED_QUEUE


def _e4_rr_headers() -> bytes:
    """rr_headers as RR >= 2023.3 re-queues it: the merged map, old rr_* keys included."""
    merged = {
        "Traceparent": [TRACEPARENT],
        "attempts": ["1"],
        "count": ["1"],
        "reason": ["expired"],
        "rr_auto_ack": ["false"],
        "rr_delay": ["0"],
        "rr_headers": ['{"attempts":["0"]}'],
        "rr_id": [E1_ID],
        "rr_job": [E1_JOB],
        "rr_pipeline": ["emails"],
        "rr_priority": ["10"],
    }
    return json.dumps(merged, separators=(",", ":")).encode()


def test_e4_requeued_job_with_rr_keys_inside_rr_headers_decodes() -> None:
    message = deliver(*e1_fields(delay=(b"I", 5), rr_headers=_e4_rr_headers()))
    assert message.type == E1_JOB
    assert message.id == E1_ID
    assert message.delay == 5
    assert message.headers["attempts"] == ("1",)
    assert message.headers["Traceparent"] == (TRACEPARENT,)


def test_e4_rr_keys_inside_rr_headers_are_ignored() -> None:
    # Note section 2.2: "A Python consumer should ignore rr_* keys found inside rr_headers";
    # keeping them makes rr_headers grow with each re-publish (nested, escaped JSON).
    message = deliver(*e1_fields(delay=(b"I", 5), rr_headers=_e4_rr_headers()))
    assert sorted(name for name in message.headers if name.startswith("rr_")) == []
    republished = envelope.encode_headers(message)["rr_headers"]
    assert b"rr_headers" not in republished


def test_e5_minimal_third_party_message() -> None:
    first = deliver(s_field("rr_job", E1_JOB), body=b'{"to":"a@example.com"}')
    assert first.type == E1_JOB
    assert (first.priority, first.delay, first.auto_ack) == (10, 0, False)
    assert first.pipeline == ""
    assert first.headers == {}
    assert first.payload == {"to": "a@example.com"}


def test_a_message_without_any_id_gets_the_same_id_on_every_redelivery() -> None:
    # RoadRunner draws a new random id per delivery; Rabbitry derives one from the content, so
    # the event store keeps a redelivered id-less message once.
    first = deliver(s_field("rr_job", E1_JOB), body=b'{"to":"a@example.com"}')
    again = deliver(s_field("rr_job", E1_JOB), body=b'{"to":"a@example.com"}')
    assert first.id == again.id
    assert first.id.startswith("sha256:") and len(first.id) == len("sha256:") + 32


def test_the_content_id_tells_apart_type_timestamp_and_body() -> None:
    body = b'{"to":"a@example.com"}'
    ids = {
        envelope.content_id("A", None, body),
        envelope.content_id("B", None, body),
        envelope.content_id("A", 1738834200, body),
        envelope.content_id("A", None, body + b" "),
    }
    assert len(ids) == 4


def test_missing_rr_id_falls_back_to_message_id() -> None:
    message = deliver(s_field("rr_job", E1_JOB), message_id="m-77")
    assert message.id == "m-77"


@pytest.mark.parametrize("headers", [None, {}], ids=["no-table", "empty-table"])
def test_m1_no_headers_is_refused_in_strict_mode(headers: dict[str, Any] | None) -> None:
    with pytest.raises(MessageError, match="rr_job"):
        envelope.decode(b'{"a":1}', headers)


def test_m1_no_headers_is_deduced_by_rr_when_lenient() -> None:
    message = envelope.decode(b'{"a":1}', None, strict=False)
    assert message.type == "deduced_by_rr" == envelope.UNKNOWN_JOB
    assert message.id == envelope.content_id("deduced_by_rr", None, b'{"a":1}')
    assert message.payload == {"a": 1}


def test_m2_rr_job_as_byte_array_is_read_as_text() -> None:
    message = deliver(s_field("rr_id", E1_ID), x_field("rr_job", b"App\\Jobs\\X"))
    assert message.type == "App\\Jobs\\X"


def test_m3_int32_delay_and_priority_are_accepted() -> None:
    message = deliver(*e1_fields(delay=(b"I", 0), priority=(b"I", 10)))
    assert (message.delay, message.priority) == (0, 10)


def test_m4_int8_priority_is_accepted() -> None:
    assert deliver(*e1_fields(priority=(b"b", 10))).priority == 10


def test_m5_rr_headers_as_long_string_is_decoded() -> None:
    fields = e1_fields()
    fields[3] = s_field("rr_headers", '{"a":["b"]}')
    assert deliver(*fields).headers == {"a": ("b",)}


def test_m6_header_value_that_is_not_a_list_becomes_one_element() -> None:
    message = deliver(*e1_fields(rr_headers=b'{"a":"b","n":3}'))
    assert message.headers == {"a": ("b",), "n": ("3",)}


@pytest.mark.parametrize(
    "raw", [b'{"broken', b"null", b"[1,2]", b'"text"', b"", b"\xff\xfe"], ids=repr
)
def test_m6_unreadable_rr_headers_give_no_headers_but_the_job_runs(raw: bytes) -> None:
    message = deliver(*e1_fields(rr_headers=raw))
    assert message.headers == {}
    assert message.type == E1_JOB
    assert message.id == E1_ID


def test_m7_roadrunner_1_hyphenated_headers_are_refused_in_strict_mode() -> None:
    fields = (
        s_field("rr-id", E1_ID),
        s_field("rr-job", E1_JOB),
        int_field("rr-attempt", b"l", 0),
    )
    with pytest.raises(MessageError, match="rr_job"):
        deliver(*fields)
    lenient = deliver(*fields, strict=False)
    assert lenient.type == envelope.UNKNOWN_JOB
    assert lenient.id != E1_ID


def test_rr_auto_ack_may_be_missing() -> None:
    assert deliver(*e1_fields(auto_ack=None)).auto_ack is False


@pytest.mark.parametrize(
    "field", [s_field("rr_auto_ack", "false"), x_field("rr_auto_ack", b"false")], ids=["S", "x"]
)
def test_rr_auto_ack_of_another_type_counts_as_false(field: bytes) -> None:
    # Note section 2.1: a present rr_auto_ack that is not a boolean is ignored (false);
    # reading the text "false" as true would ack before the handler ran.
    assert deliver(*e1_fields(auto_ack=None), field).auto_ack is False


@pytest.mark.parametrize(
    "field",
    [s_field("rr_delay", "5"), t_field("rr_delay", True), _field("rr_delay", b"d", b"\0" * 8)],
    ids=["S", "t", "d"],
)
def test_delay_of_a_non_integer_type_is_zero(field: bytes) -> None:
    fields = [f for f in e1_fields() if not f.startswith(b"\x08rr_delay")]
    assert deliver(*fields, field).delay == 0


def test_unknown_headers_are_kept_in_extra() -> None:
    message = deliver(*e1_fields(), s_field("x-custom", "v"), int_field("x-n", b"s", -3))
    assert message.extra == {"x-custom": "v", "x-n": -3}


def test_body_that_is_not_json_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="body is not JSON"):
        deliver(*e1_fields(), body=b'a:1:{s:2:"to";}')


def test_body_that_is_not_utf8_is_a_message_error() -> None:
    with pytest.raises(MessageError, match="body is not UTF-8"):
        deliver(*e1_fields(), body=b'{"to":"\xff"}')


def test_body_is_kept_byte_exact() -> None:
    body = '{ "to" : "zoë@example.com",\n  "n": 1.0 }'.encode()
    message = deliver(*e1_fields(), body=body)
    assert message.raw_body == body
    assert message.body() == body
    assert envelope.encode(message)[1] == body


def test_integer_timestamp_becomes_utc_datetime() -> None:
    message = deliver(*e1_fields(), timestamp=1_700_000_000)
    assert message.timestamp == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)


def test_correlation_header_wins_over_the_property() -> None:
    message = deliver(*e1_fields(), s_field("x-correlation-id", "hdr"), correlation_id="prop")
    assert message.correlation_id == "hdr"
    assert deliver(*e1_fields(), correlation_id="prop").correlation_id == "prop"


def test_a_received_delivery_decodes_with_its_properties_and_where_it_came_from() -> None:
    properties = Properties(
        headers={"rr_job": "t"},
        message_id="m-1",
        correlation_id="c-1",
        timestamp=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    delivery = Received(7, True, "orders", "order.created", "ctag", properties, b'{"n":1}')
    message = envelope.decode_received(delivery, strict=True)
    assert (message.type, message.id, message.payload) == ("t", "m-1", {"n": 1})
    assert message.correlation_id == "c-1"
    assert message.timestamp == properties.timestamp
    assert (message.exchange, message.routing_key, message.redelivered) == (
        "orders",
        "order.created",
        True,
    )


def test_a_delivery_whose_properties_did_not_decode_is_a_message_error() -> None:
    delivery = Received(1, False, "", "q", "ctag", Properties(), b"{}", "message_id is not UTF-8")
    with pytest.raises(MessageError, match="undecodable delivery: message_id is not UTF-8"):
        envelope.decode_received(delivery, strict=False)


# --- round trip -----------------------------------------------------------------------------

ROUND_TRIP = [
    Message(type="order.created", payload={"n": 1}),
    Message(
        type="App\\Jobs\\Report",
        payload={"name": "Zoë", "items": [1, 2.5, None, True], "nested": {"k": "v"}},
        headers={"attempts": ("2",), "multi": ("a", "b", "")},
        pipeline="reports",
        delay=30,
        priority=1,
        auto_ack=True,
        tenant="acme",
        correlation_id="corr-42",
        traceparent=TRACEPARENT,
        attempt=3,
        extra={"x-custom": "v"},
    ),
    Message(type="t", payload=None),
    Message(type="t", payload="just a string"),
    Message(type="t", payload=[1, 2, 3]),
]


@pytest.mark.parametrize("sent", ROUND_TRIP, ids=lambda m: f"{m.type}:{type(m.payload).__name__}")
def test_encode_then_decode_gives_back_the_message(sent: Message) -> None:
    properties, body = envelope.encode(sent)
    received = envelope.decode(
        body,
        decode_table(encode_table(properties["headers"])),
        message_id=properties["message_id"],
        timestamp=properties["timestamp"],
        correlation_id=properties.get("correlation_id"),
    )
    for name in (
        "type",
        "id",
        "payload",
        "headers",
        "pipeline",
        "delay",
        "priority",
        "auto_ack",
        "tenant",
        "correlation_id",
        "traceparent",
        "timestamp",
        "attempt",
        "extra",
    ):
        assert getattr(received, name) == getattr(sent, name), name
    assert received.raw_body == sent.body()


# --- field table tags -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (True, b"t\x01"),
        (False, b"t\x00"),
        (7, b"l" + struct.pack(">q", 7)),
        (Int64(-1), b"l" + b"\xff" * 8),
        ("é", b"S\x00\x00\x00\x02\xc3\xa9"),
        (b"ab", b"x\x00\x00\x00\x02ab"),
        (bytearray(b"ab"), b"x\x00\x00\x00\x02ab"),
        (1.5, b"d" + struct.pack(">d", 1.5)),
        (None, b"V"),
        (Decimal("1.25"), b"D\x02\x00\x00\x00\x7d"),
        (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), b"T" + struct.pack(">Q", 1_704_067_200)),
        ({}, b"F\x00\x00\x00\x00"),
        ([], b"A\x00\x00\x00\x00"),
        (["a", 1], b"A\x00\x00\x00\x0f" + b"S\x00\x00\x00\x01a" + b"l" + struct.pack(">q", 1)),
    ],
    ids=repr,
)
def test_field_values_get_their_fixed_tag(value: object, wire: bytes) -> None:
    assert encode_value(value) == wire
    assert decode_table(encode_table({"k": value}))["k"] == value


def test_field_table_refuses_what_amqp_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode_value(object())
    with pytest.raises(ValueError, match="255"):
        encode_table({"k" * 256: 1})
