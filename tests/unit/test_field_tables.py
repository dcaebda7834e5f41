"""Header tables read back as pamqp reads them, message after message, whatever was cached."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pamqp import decode as pamqp_decode

from rabbitry.amqp.fieldtable import Int64, decode_table, encode_table
from rabbitry.messaging.envelope import Message, encode_headers


def pamqp_reads(data: bytes) -> dict[str, Any]:
    return dict(pamqp_decode.field_table(data)[1])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"x-tenant": "acme", "x-count": Int64(3), "when": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)},
        {"nested": {"a": [1, "b"]}},
        {"x-bytes": b"\xff\x00"},
    ],
)
def test_a_roadrunner_table_reads_as_pamqp_reads_it_every_time(extra: dict[str, Any]) -> None:
    tables = [
        encode_table(encode_headers(Message(type="t", payload={}, extra=extra))) for _ in range(3)
    ]
    for data in tables:
        assert decode_table(data) == pamqp_reads(data)


def test_what_one_caller_changes_in_a_decoded_table_no_other_sees() -> None:
    data = encode_table(encode_headers(Message(type="t", payload={}, extra={"n": {"a": 1}})))
    first = decode_table(data)
    first["rr_headers"][0:2] = b"[]"
    first["n"]["a"] = 2
    second = decode_table(data)
    assert second["rr_headers"] == bytearray(b"{}")
    assert second["n"] == {"a": 1}


def test_an_rr_id_that_is_not_utf8_reads_as_bytes_as_in_pamqp() -> None:
    good = encode_table({"rr_id": "a", "rr_job": "t"})
    bad = good.replace(b"\x00\x00\x00\x01a", b"\x00\x00\x00\x01\xff")
    decode_table(good)
    assert decode_table(bad) == pamqp_reads(bad) == {"rr_id": b"\xff", "rr_job": "t"}


def test_a_truncated_table_is_a_value_error() -> None:
    data = encode_table({"rr_id": "a", "rr_job": "t"})
    with pytest.raises(ValueError):
        decode_table(data[:-3])
