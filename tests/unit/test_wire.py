"""The hand-written frame codec agrees with pamqp byte for byte, and keeps header type tags."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import struct

import pytest
from pamqp import base, commands, header
from pamqp import body as pamqp_body
from pamqp import frame as pamqp_frame

from rabbitry.amqp import wire
from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.properties import (
    EMPTY,
    Properties,
    decode_properties,
    encode_properties,
)

FULL = Properties(
    content_type="application/json",
    content_encoding="utf-8",
    headers={"rr_delay": Int64(5000), "rr_headers": b'{"a":["b"]}', "name": "x", "ok": True},
    delivery_mode=2,
    priority=7,
    correlation_id="corr-1",
    reply_to="replies",
    expiration="60000",
    message_id="m-1",
    timestamp=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
    type="order.created",
    user_id="guest",
    app_id="rabbitry-tests",
)


def _frames(data: bytes) -> list[object]:
    """Unmarshal a byte stream with pamqp: the reference reader."""
    out: list[object] = []
    while data:
        used, _, value = pamqp_frame.unmarshal(data)
        out.append(value)
        data = data[used:]
    return out


# --- properties ---------------------------------------------------------------------------


def test_every_property_survives_a_round_trip() -> None:
    assert decode_properties(encode_properties(FULL)) == FULL


def test_decoded_properties_behave_like_constructed_ones() -> None:
    decoded = decode_properties(encode_properties(Properties(content_type="a", priority=1)))
    assert decoded == Properties(content_type="a", priority=1)
    assert decoded.headers is None
    assert dataclasses.replace(decoded, priority=2).priority == 2
    assert dataclasses.asdict(decoded)["content_type"] == "a"
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.priority = 5  # type: ignore[misc]  # frozen: the point of the test


def test_no_properties_is_an_empty_flag_word() -> None:
    assert encode_properties(EMPTY) == b"\x00\x00"
    assert decode_properties(b"\x00\x00") is EMPTY


def test_integer_timestamp_decodes_as_utc_datetime() -> None:
    decoded = decode_properties(encode_properties(Properties(timestamp=1_700_000_000)))
    assert decoded.timestamp == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)


def test_properties_without_headers_match_pamqp_bytes() -> None:
    props = Properties(content_type="text/plain", delivery_mode=2, message_id="m", app_id="a")
    reference = commands.Basic.Properties(
        content_type="text/plain", delivery_mode=2, message_id="m", app_id="a"
    )
    assert encode_properties(props) == reference.marshal()


def test_header_tags_are_the_callers_not_pamqps() -> None:
    raw = encode_properties(Properties(headers={"rr_delay": Int64(5), "rr_headers": b"{}"}))
    assert b"\x08rr_delayl" + struct.pack(">q", 5) in raw
    assert b"\x0arr_headersx\x00\x00\x00\x02{}" in raw


def test_properties_encoded_by_pamqp_decode_here() -> None:
    reference = commands.Basic.Properties(
        content_type="a/b",
        headers={"n": 1, "s": "t"},
        priority=3,
        timestamp=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        message_type="kind",
    )
    decoded = decode_properties(reference.marshal())
    assert decoded.content_type == "a/b"
    assert decoded.headers == {"n": 1, "s": "t"}
    assert decoded.priority == 3
    assert decoded.timestamp == dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    assert decoded.type == "kind"


def test_overlong_short_string_is_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        encode_properties(Properties(message_id="x" * 256))


# --- publish --------------------------------------------------------------------------------


def test_publish_triple_reads_back_with_pamqp() -> None:
    data = b"".join(
        wire.encode_publish(
            1, "ex", "rk", b"payload", encode_properties(FULL), mandatory=True, frame_max=4096
        )
    )
    method, content, body = _frames(data)
    assert isinstance(method, commands.Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == ("ex", "rk", True)
    assert isinstance(content, header.ContentHeader)
    assert content.body_size == 7
    assert content.properties.message_id == "m-1"
    assert isinstance(body, pamqp_body.ContentBody)
    assert body.value == b"payload"


def test_publish_method_matches_pamqp_bytes() -> None:
    parts = wire.encode_publish(
        3, "", "queue", b"x", b"\x00\x00", mandatory=False, frame_max=131072
    )
    reference = pamqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key="queue"), 3)
    assert b"".join(parts).startswith(reference)


def test_empty_body_sends_no_body_frame() -> None:
    data = b"".join(
        wire.encode_publish(1, "", "q", b"", b"\x00\x00", mandatory=True, frame_max=4096)
    )
    _, content = _frames(data)
    assert isinstance(content, header.ContentHeader)
    assert content.body_size == 0


@pytest.mark.parametrize("size", [4088, 4089, 10_000, 3 * 4088])
def test_body_larger_than_frame_max_is_split(size: int) -> None:
    payload = bytes(random.Random(size).randbytes(size))
    data = b"".join(
        wire.encode_publish(1, "", "q", payload, b"\x00\x00", mandatory=True, frame_max=4096)
    )
    frames = _frames(data)
    bodies = [f for f in frames if isinstance(f, pamqp_body.ContentBody)]
    assert all(len(b.value) <= 4096 - wire.FRAME_OVERHEAD for b in bodies)
    assert len(bodies) == -(-size // 4088)
    assert b"".join(b.value for b in bodies) == payload


# --- settles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("multiple", [False, True])
def test_ack_bytes_match_pamqp(multiple: bool) -> None:
    reference = commands.Basic.Ack(delivery_tag=2**40 + 7, multiple=multiple)
    assert wire.encode_ack(1, 2**40 + 7, multiple=multiple) == pamqp_frame.marshal(reference, 1)


@pytest.mark.parametrize("multiple", [False, True])
@pytest.mark.parametrize("requeue", [False, True])
def test_nack_bytes_match_pamqp(multiple: bool, requeue: bool) -> None:
    reference = commands.Basic.Nack(delivery_tag=99, multiple=multiple, requeue=requeue)
    encoded = wire.encode_nack(5, 99, multiple=multiple, requeue=requeue)
    assert encoded == pamqp_frame.marshal(reference, 5)


@pytest.mark.parametrize("requeue", [False, True])
def test_reject_bytes_match_pamqp(requeue: bool) -> None:
    reference = commands.Basic.Reject(delivery_tag=12, requeue=requeue)
    assert wire.encode_reject(1, 12, requeue=requeue) == pamqp_frame.marshal(reference, 1)


# --- reading -------------------------------------------------------------------------------


def _delivery_stream(count: int, size: int) -> bytes:
    """What a broker sends for ``count`` deliveries of ``size``-byte bodies (frame_max 4096)."""
    props = commands.Basic.Properties(content_type="application/json", delivery_mode=2)
    chunks: list[bytes] = []
    for tag in range(1, count + 1):
        deliver = commands.Basic.Deliver("ctag", tag, tag % 2 == 0, "ex", f"rk.{tag}")
        chunks.append(pamqp_frame.marshal(deliver, 1))
        chunks.append(pamqp_frame.marshal(header.ContentHeader(0, size, props), 1))
        body = bytes([tag % 256]) * size
        for start in range(0, size, 4088):
            chunks.append(
                pamqp_frame.marshal(pamqp_body.ContentBody(body[start : start + 4088]), 1)
            )
    return b"".join(chunks)


def _read(frames: list[wire.Frame]) -> list[tuple[int, bool, str, bytes]]:
    """Assemble deliveries the way Link does."""
    out: list[tuple[int, bool, str, bytes]] = []
    fields: tuple[str, int, bool, str, str] | None = None
    size, chunks = 0, []
    for frame_type, _, payload in frames:
        if frame_type == wire.FRAME_METHOD:
            assert wire.method_id(payload) == wire.BASIC_DELIVER
            fields = wire.parse_deliver(payload)
        elif frame_type == wire.FRAME_HEADER:
            size, props = wire.parse_content_header(payload)
            assert props.delivery_mode == 2
        else:
            chunks.append(payload)
            if sum(map(len, chunks)) == size:
                assert fields is not None
                out.append((fields[1], fields[2], fields[4], b"".join(chunks)))
                chunks = []
    return out


@pytest.mark.parametrize("seed", range(5))
def test_frames_split_across_arbitrary_chunk_boundaries(seed: int) -> None:
    stream = _delivery_stream(count=20, size=5000)
    rng = random.Random(seed)
    buffer = bytearray()
    frames: list[wire.Frame] = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 7, 8, 13, 500, 4096, 9000])
        buffer += stream[pos : pos + step]
        pos += step
        frames += wire.split_frames(buffer)
    assert not buffer
    deliveries = _read(frames)
    assert [d[0] for d in deliveries] == list(range(1, 21))
    assert all(d[1] == (d[0] % 2 == 0) for d in deliveries)
    assert all(d[2] == f"rk.{d[0]}" for d in deliveries)
    assert all(d[3] == bytes([d[0]]) * 5000 for d in deliveries)


def test_split_keeps_a_partial_frame() -> None:
    frame = wire.encode_ack(1, 5)
    buffer = bytearray(frame + frame[:10])
    assert wire.split_frames(buffer) == [(wire.FRAME_METHOD, 1, frame[7:-1])]
    assert buffer == frame[:10]


def test_heartbeat_frame_is_recognised() -> None:
    assert wire.split_frames(bytearray(wire.HEARTBEAT)) == [(wire.FRAME_HEARTBEAT, 0, b"")]


def test_missing_frame_end_is_an_error() -> None:
    with pytest.raises(wire.FrameError, match="frame-end"):
        wire.split_frames(bytearray(wire.encode_ack(1, 5)[:-1] + b"\x00"))


def test_protocol_header_from_broker_means_refusal() -> None:
    with pytest.raises(wire.FrameError, match="refused"):
        wire.split_frames(bytearray(b"AMQP\x00\x00\x09\x01"))


def _payload(method: base.Frame) -> bytes:
    return pamqp_frame.marshal(method, 1)[7:-1]


def test_confirms_parse() -> None:
    assert wire.parse_confirm(_payload(commands.Basic.Ack(41, True))) == (41, True, False)
    nack = _payload(commands.Basic.Nack(42, False, True))
    assert wire.method_id(nack) == wire.BASIC_NACK
    assert wire.parse_confirm(nack) == (42, False, True)


def test_return_parses() -> None:
    payload = _payload(commands.Basic.Return(312, "NO_ROUTE", "ex", "rk"))
    assert wire.method_id(payload) == wire.BASIC_RETURN
    assert wire.parse_return(payload) == (312, "NO_ROUTE", "ex", "rk")


def test_control_methods_go_through_pamqp() -> None:
    close = wire.decode_method(_payload(commands.Channel.Close(404, "NOT_FOUND", 60, 40)))
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (404, "NOT_FOUND")
    with pytest.raises(wire.FrameError):
        wire.decode_method(b"\x00\x99\x00\x01")
