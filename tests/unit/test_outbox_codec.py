"""Header tables survive the trip through the ledger's JSON column, types included."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from rabbitry.amqp.fieldtable import Int64
from rabbitry.errors import MessageError
from rabbitry.messaging.envelope import Message, decode, encode_headers
from rabbitry.outbox.codec import headers_from_json, headers_to_json


def roundtrip(table: dict[str, object]) -> dict[str, object]:
    return headers_from_json(json.loads(json.dumps(headers_to_json(table))))


def test_every_field_type_roundtrips() -> None:
    table: dict[str, object] = {
        "s": "text",
        "b": True,
        "i": Int64(7),
        "f": 1.5,
        "none": None,
        "utf8": b'{"a":["1"]}',
        "binary": b"\xff\x00\x01",
        "when": dt.datetime(2024, 7, 1, 12, 0, tzinfo=dt.UTC),
        "dec": Decimal("1.50"),
        "nested": {"x": [1, "y", b"z"]},
        "tricky": {"$bytes": "not a tag, a table"},
    }
    assert roundtrip(table) == table


def test_rr_headers_stay_readable() -> None:
    stored = headers_to_json({"rr_headers": b'{"k":["v"]}'})
    assert stored == {"rr_headers": {"$bytes": '{"k":["v"]}'}}


def test_a_message_is_rebuilt_with_its_id_headers_and_body() -> None:
    message = Message(
        type="shipping.registered",
        payload={"id": 1, "name": "ñandú"},
        headers={"trace": ("a", "b")},
        tenant="acme",
        correlation_id="c-1",
        priority=3,
        extra={"x-custom": Int64(5)},
    )
    table = roundtrip(encode_headers(message))
    rebuilt = decode(message.body(), table, message_id=message.id)
    assert rebuilt.id == message.id
    assert rebuilt.body() == message.body()
    assert rebuilt.headers == message.headers
    assert (rebuilt.tenant, rebuilt.correlation_id, rebuilt.priority) == ("acme", "c-1", 3)
    assert encode_headers(rebuilt) == encode_headers(message)


def test_unknown_value_type_is_a_message_error() -> None:
    with pytest.raises(MessageError):
        headers_to_json({"x": object()})


def test_corrupt_tag_is_a_message_error() -> None:
    with pytest.raises(MessageError):
        headers_from_json({"x": {"$base64": "%%%"}})
