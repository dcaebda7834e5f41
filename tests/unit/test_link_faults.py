"""Link against a scripted broker when things go wrong: bytes a foreign publisher wrote that do
not decode, calls that cannot be encoded, replies that never come, closes that cross, frames
that break the rules, an alarm. What no real broker does on demand, pinned here; the broker
parts of each story are in tests/integration (test_consumer_faults, test_broker_alarms, ...).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pamqp import body as pamqp_body
from pamqp import commands, header
from pamqp import frame as pamqp_frame

from rabbitry.amqp import wire
from rabbitry.amqp.confirms import Confirms
from rabbitry.amqp.fieldtable import Int64, encode_table
from rabbitry.amqp.link import (
    Link,
    LinkClosed,
    LinkError,
    Outgoing,
    PublishOutcome,
    Received,
    Unfit,
)
from rabbitry.amqp.properties import (
    UNDECODABLE_HEADERS,
    Properties,
    decode_properties,
    encode_properties,
)
from rabbitry.amqp.settles import AckFolder
from rabbitry.messaging.consumer import Consumer, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.sender import RETIRE_AFTER, Sender
from rabbitry.messaging.settings import AmqpSettings
from scripted_broker import Transport, feed, open_link, turns

PROPS = Properties(delivery_mode=2)


@pytest.fixture
async def opened() -> AsyncIterator[tuple[Link, Transport]]:
    link, transport = await open_link()
    yield link, transport
    link.connection_lost(None)


def delivery_frames(
    tag: int, properties_payload: bytes, body: bytes, routing_key: bytes = b"q"
) -> bytes:
    """A Basic.Deliver, a content header with these raw properties, and the body, on channel 1."""
    deliver = (
        b"\x00\x3c\x00\x3c"
        + bytes((4,))
        + b"ctag"
        + struct.pack(">QB", tag, 0)
        + b"\x00"
        + bytes((len(routing_key),))
        + routing_key
    )
    content = struct.pack(">HHQ", 60, 0, len(body)) + properties_payload
    frames = [(wire.FRAME_METHOD, deliver), (wire.FRAME_HEADER, content)]
    if body:  # an empty body has no body frame
        frames.append((wire.FRAME_BODY, body))
    return b"".join(struct.pack(">BHI", kind, 1, len(p)) + p + b"\xce" for kind, p in frames)


async def consuming(link: Link, transport: Transport) -> list[Received]:
    got: list[Received] = []
    started = asyncio.ensure_future(link.consume("q", got.append))
    await turns()
    transport.writes.clear()
    feed(link, 1, commands.Basic.ConsumeOk("ctag"))
    await started
    return got


# --- 1. a delivery the decoder cannot read never drops the connection ------------------------


def test_a_timestamp_in_milliseconds_reads_as_the_same_instant() -> None:
    when = dt.datetime(2026, 11, 27, 10, 30, 15, 250000, tzinfo=dt.UTC)
    millis = encode_properties(Properties(timestamp=int(when.timestamp() * 1000)))
    assert decode_properties(millis).timestamp == when
    seconds = encode_properties(Properties(timestamp=int(when.timestamp())))
    assert decode_properties(seconds).timestamp == when.replace(microsecond=0)


async def test_a_message_id_that_is_not_utf8_is_that_deliverys_error_and_the_link_stays_open(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    got = await consuming(link, transport)
    raw = encode_properties(Properties(content_type="application/json", message_id="x"))
    bad = raw.replace(b"\x01x", b"\x02\xff\xfe")  # message_id: two bytes that are not UTF-8
    link.data_received(delivery_frames(1, bad, b"{}") + delivery_frames(2, raw, b"{}"))
    assert link.is_open
    assert [d.delivery_tag for d in got] == [1, 2]
    assert got[0].error is not None and "message_id is not UTF-8" in got[0].error
    assert got[1].error is None
    # What was read encodes back to the publisher's bytes: a dead-lettered copy is exact.
    assert encode_properties(got[0].properties) == bad


PROPS_RAW = encode_properties(PROPS)


async def test_a_routing_key_that_is_not_utf8_is_that_deliverys_error(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    got = await consuming(link, transport)
    link.data_received(delivery_frames(1, encode_properties(PROPS), b"{}", routing_key=b"k\xff"))
    assert link.is_open
    assert got[0].error is not None and "routing key is not UTF-8" in got[0].error


async def test_a_timestamp_that_is_no_date_and_a_broken_header_table_are_kept_raw(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    got = await consuming(link, transport)
    stamp = encode_properties(Properties(timestamp=2**63))
    table = b"\x00\x00\x00\x03\x01k?"  # one field of an unknown type tag
    broken = struct.pack(">H", 0x2000) + table
    link.data_received(delivery_frames(1, stamp, b"") + delivery_frames(2, broken, b"{}"))
    assert link.is_open
    assert got[0].error is not None and "not a date" in got[0].error
    assert encode_properties(got[0].properties) == stamp
    assert got[1].error is not None and "header table" in got[1].error
    assert got[1].properties.headers == {UNDECODABLE_HEADERS: table[4:]}


async def test_a_header_table_nested_thousands_deep_is_that_deliverys_error(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    got = await consuming(link, transport)
    table = b""
    for _ in range(3000):  # {"k": {"k": {... }}}, each level a field of tag F
        field = b"\x01kF" + table if table else b""
        table = struct.pack(">I", len(field)) + field
    nested = struct.pack(">H", 0x2000) + table
    link.data_received(delivery_frames(1, nested, b"{}") + delivery_frames(2, PROPS_RAW, b"{}"))
    assert link.is_open
    assert [d.delivery_tag for d in got] == [1, 2]
    assert got[0].error is not None and "header table" in got[0].error
    assert got[1].error is None


async def test_a_delivery_whose_callback_raises_is_given_back_not_left_unsettled(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened

    def explode(_: Received) -> None:
        raise RuntimeError("bug")

    started = asyncio.ensure_future(link.consume("q", explode))
    await turns()
    feed(link, 1, commands.Basic.ConsumeOk("ctag"))
    await started
    transport.writes.clear()
    link.data_received(delivery_frames(1, encode_properties(PROPS), b"x"))
    await turns()
    (reject,) = transport.frames()
    assert isinstance(reject, commands.Basic.Reject)
    assert (reject.delivery_tag, reject.requeue) == (1, True)
    assert link.is_open


# --- 4, 7. every wait is bounded, and the queue of calls stays in step -------------------------


async def test_a_method_that_cannot_be_encoded_fails_alone_and_the_next_call_gets_its_reply(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    with pytest.raises(LinkError, match=r"Basic\.Qos"):
        await link.qos(70000)
    second = asyncio.ensure_future(link.qos(5))
    await turns()
    (qos,) = transport.frames()
    assert qos.prefetch_count == 5
    feed(link, 1, commands.Basic.QosOk())
    await asyncio.wait_for(second, 1)


async def test_a_reply_that_never_comes_closes_the_link_after_the_rpc_timeout() -> None:
    link, transport = await open_link(rpc_timeout=0.2)
    with pytest.raises(LinkClosed, match=r"no reply to Basic\.Cancel within 0\.2s"):
        await asyncio.wait_for(link.cancel("ctag"), 5)
    assert not link.is_open
    assert transport.aborted
    link.connection_lost(None)


async def test_close_ok_is_answered_when_the_broker_closes_while_we_are_closing(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    closing = asyncio.ensure_future(link.close())
    await turns()
    assert [type(f) for f in transport.frames()] == [commands.Connection.Close]
    feed(link, 0, commands.Connection.Close(320, "CONNECTION_FORCED - shutdown", 0, 0))
    assert [type(f) for f in transport.frames()] == [commands.Connection.CloseOk]
    link.connection_lost(None)
    await asyncio.wait_for(closing, 1)


# --- 5. a message that cannot fit is refused before anything is written ---------------------


async def test_headers_larger_than_frame_max_are_refused_before_anything_is_written(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    huge = Properties(headers={"blob": "x" * 200_000})
    with pytest.raises(Unfit, match="frame_max"):
        link.publish("", "q", b"body", huge)
    with pytest.raises(Unfit) as caught:
        await link.publish_many([Outgoing("", "q", b"a"), Outgoing("", "q", b"b", huge)])
    assert list(caught.value.reasons) == [1]
    await turns()
    assert transport.writes == []
    assert link.is_open
    fine = link.publish("", "q", b"body", PROPS)
    await turns()
    feed(link, 1, commands.Basic.Ack(1))
    assert await fine is PublishOutcome.ACKED  # the refused ones took no delivery tag


def test_a_header_number_out_of_range_is_a_value_error_naming_its_key() -> None:
    with pytest.raises(ValueError, match="'rr_delay'"):
        encode_table({"rr_job": "x", "rr_delay": Int64(2**64)})
    with pytest.raises(ValueError, match="'outer': header 'when'"):
        encode_table({"outer": {"when": dt.datetime(1900, 1, 1, tzinfo=dt.UTC)}})


# --- 11. a return is matched to exactly the message returned ----------------------------------


async def test_a_return_goes_to_the_look_alike_whose_headers_it_carries() -> None:
    confirms = Confirms()
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    routed = Properties(headers={"route": "yes"})
    dropped = Properties(headers={"route": "no"})
    items = [Outgoing("h", "", b"same", routed), Outgoing("h", "", b"same", dropped)]
    confirms.add(items, future, False)
    assert confirms.returned("h", "", b"same", encode_properties(dropped))
    confirms.settle(2, multiple=True, outcome=PublishOutcome.ACKED)
    assert future.result() == [PublishOutcome.ACKED, PublishOutcome.RETURNED]


# --- 6. one bad publish fails alone -------------------------------------------------------------


async def test_a_refused_publish_fails_alone_and_those_after_it_may_be_sent_again(
    opened: tuple[Link, Transport],
) -> None:
    link, _ = opened
    first = link.publish("", "q", b"1", PROPS)
    refused = link.publish("missing", "k", b"2", PROPS)
    batch = asyncio.ensure_future(
        link.publish_many([Outgoing("", "q", b"3"), Outgoing("missing", "k", b"4")])
    )
    await turns()
    text = "NOT_FOUND - no exchange 'missing' in vhost '/'"
    feed(link, 1, commands.Channel.Close(404, text, 60, 40))
    assert await first is PublishOutcome.ACKED  # handled before the refusal: routed
    with pytest.raises(LinkClosed) as caught:
        await refused
    assert caught.value.reply_code == 404
    assert await batch == [PublishOutcome.SKIPPED, PublishOutcome.SKIPPED]  # dropped unread


# --- 8. cancelling connect() closes the half-open connection -----------------------------------


async def test_a_cancelled_connect_closes_the_connection_it_opened() -> None:
    ended = asyncio.Event()

    async def silent_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)  # the protocol header; then never answer
        await reader.read()  # returns once the client closes its side
        ended.set()
        writer.close()

    server = await asyncio.start_server(silent_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connecting = asyncio.ensure_future(
            Link.connect(f"amqp://guest:guest@127.0.0.1:{port}/", timeout=30)
        )
        await asyncio.sleep(0.3)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


# --- 12. ack folding does not stall behind a tag that is never settled -------------------------


def test_acks_behind_a_tag_never_settled_take_no_memory_per_ack() -> None:
    folder = AckFolder(1)
    folder.ack(2)  # tag 1 stays unsettled: a handler that hangs
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for tag in range(3, 200_003):
        folder.ack(tag)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert folder.gaps == 1
    assert grown < 10_000  # a set of 200,000 tags would be megabytes
    assert folder.ack(1) is None  # the gap fills: one multiple ack covers it
    assert folder.take_run() == wire.encode_ack(1, 1, multiple=True)
    assert folder.gaps == 0
    assert folder.ack(200_003) is None  # and folding goes on
    assert folder.take_run() == wire.encode_ack(1, 200_003, multiple=True)


# --- 13. frames that break the rules; a large frame in small reads ----------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (struct.pack(">BHI", 3, 1, 200_000) + b"x" * 200_000 + b"\xce", "exceeds frame_max"),
        (struct.pack(">BHI", 5, 1, 1) + b"x\xce", "unknown frame type 5"),
    ],
)
async def test_a_frame_above_frame_max_or_of_unknown_type_is_a_protocol_error(
    opened: tuple[Link, Transport], frame: bytes, reason: str
) -> None:
    link, transport = opened
    link.data_received(frame)
    (close,) = transport.frames()
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 501 and reason in close.reply_text
    assert not link.is_open


class CountingBuffer(bytearray):
    copied = 0

    def __bytes__(self) -> bytes:
        CountingBuffer.copied += len(self)
        return bytes(memoryview(self))


def test_a_large_frame_arriving_in_small_reads_is_copied_once() -> None:
    payload = b"x" * 131_000
    frame = struct.pack(">BHI", 3, 1, len(payload)) + payload + b"\xce"
    buffer = CountingBuffer()
    CountingBuffer.copied = 0
    frames: list[wire.Frame] = []
    for start in range(0, len(frame), 1000):
        buffer += frame[start : start + 1000]
        frames += wire.split_frames(buffer, 131_072)
    assert frames == [(3, 1, payload)]
    assert CountingBuffer.copied <= len(frame)  # once, not once per read


# --- 13. pending acks survive a broker basic.cancel ---------------------------------------------


async def test_acks_after_a_broker_cancel_still_go_out_when_the_owner_keeps_the_link(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    cancelled: list[str] = []
    link.on_cancel = cancelled.append
    got = await consuming(link, transport)
    link.data_received(delivery_frames(1, encode_properties(PROPS), b"a"))
    feed(link, 1, commands.Basic.Cancel("ctag"))
    assert cancelled == ["ctag"] and link.is_open
    link.ack(got[0].delivery_tag)  # the handler finished after the cancel
    await turns()
    (ack,) = transport.frames()
    assert isinstance(ack, commands.Basic.Ack) and ack.delivery_tag == 1


# --- 3. broker alarms ---------------------------------------------------------------------------


async def test_the_broker_blocking_and_unblocking_the_connection_is_reported(
    opened: tuple[Link, Transport],
) -> None:
    link, _ = opened
    seen: list[str | None] = []
    link.on_blocked = seen.append
    feed(link, 0, commands.Connection.Blocked("low on memory"))
    assert link.blocked == "low on memory"
    feed(link, 0, commands.Connection.Unblocked())
    assert link.blocked is None
    assert seen == ["low on memory", None]
    assert link.is_open


# --- body frames split anywhere still work with the checks above --------------------------------


async def test_a_body_split_over_frames_and_reads_is_reassembled(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    got = await consuming(link, transport)
    body = bytes(range(256)) * 1000
    deliver = pamqp_frame.marshal(commands.Basic.Deliver("ctag", 1, False, "", "q"), 1)
    content = pamqp_frame.marshal(
        header.ContentHeader(0, len(body), commands.Basic.Properties(delivery_mode=2)), 1
    )
    parts = [
        pamqp_frame.marshal(pamqp_body.ContentBody(body[i : i + 131_064]), 1)
        for i in range(0, len(body), 131_064)
    ]
    data = deliver + content + b"".join(parts)
    for start in range(0, len(data), 4096):
        link.data_received(data[start : start + 4096])
    assert [d.body for d in got] == [body]


@pytest.mark.parametrize(
    "bad",
    [{"prefetch": 70000}, {"prefetch": 0}, {"concurrency": 0}, {"batch_size": 0}],
)
def test_a_subscription_that_basic_qos_could_not_carry_is_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="Subscription"):
        Subscription("q", **bad)  # type: ignore[arg-type]


async def test_a_consumer_cancelled_by_the_broker_acks_its_work_in_flight_then_closes(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    release = asyncio.Event()

    async def handle(_: Message) -> None:
        await release.wait()

    amqp = AmqpSettings(url="amqp://unused/", drain_timeout=5)
    consumer = Consumer(amqp, Subscription("q", default=handle, strict=False), link, RetryPolicy())
    starting = asyncio.ensure_future(consumer.start())
    await turns()
    feed(link, 1, commands.Basic.QosOk())
    await turns()
    feed(link, 1, commands.Basic.ConsumeOk("ctag"))
    await starting
    link.data_received(delivery_frames(1, encode_properties(PROPS), b"{}"))
    await turns()
    transport.writes.clear()
    feed(link, 1, commands.Basic.Cancel("ctag"))  # its queue was deleted
    await turns()
    assert link.is_open and transport.writes == []
    release.set()
    await turns(4)
    written = [type(f) for f in transport.frames()]
    assert written == [commands.Basic.Ack, commands.Connection.Close]
    feed(link, 0, commands.Connection.CloseOk())
    link.connection_lost(None)
    await asyncio.wait_for(asyncio.shield(link.closed), 1)


async def test_a_message_whose_headers_cannot_be_written_fails_alone_in_a_batch() -> None:
    link, transport = await open_link()
    sender = Sender(AmqpSettings(url="amqp://unused/"), "t", open_link=_returning(link))
    items = [
        Outgoing("", "q", b"a", PROPS),
        Outgoing("", "q", b"b", Properties(headers={"rr_delay": Int64(2**70)})),
        Outgoing("", "q", b"c", PROPS),
    ]
    sending = asyncio.ensure_future(sender.send(items))
    await turns(4)
    assert [f.value for f in transport.frames() if isinstance(f, pamqp_body.ContentBody)] == [
        b"a",
        b"c",
    ]
    feed(link, 1, commands.Basic.Ack(2, multiple=True))
    verdicts = await sending
    assert [outcome for outcome, _ in verdicts] == [
        PublishOutcome.ACKED,
        PublishOutcome.UNFIT,
        PublishOutcome.ACKED,
    ]
    assert "'rr_delay'" in verdicts[1][1]
    link.connection_lost(None)


async def test_after_a_nack_the_new_connection_waits_for_the_sends_in_flight_on_the_old() -> None:
    # The broker routes what two connections carry in no order between them: a send after
    # the nack must not reach the broker before an earlier one still unconfirmed on the
    # replaced connection (its channel may be stalled, asking a node that is down).
    old, old_wire = await open_link()
    new, new_wire = await open_link()
    links = iter([old, new])

    async def opened(name: str) -> Link:
        return next(links)

    now = [0.0]
    sender = Sender(AmqpSettings(url="amqp://unused/"), "t", open_link=opened, clock=lambda: now[0])
    first = asyncio.ensure_future(sender.send([Outgoing("", "q", b"m0", PROPS)]))
    await turns(4)
    second = asyncio.ensure_future(sender.send([Outgoing("", "q", b"m1", PROPS)]))
    await turns(4)
    assert _bodies(old_wire) == [b"m0", b"m1"]
    now[0] += RETIRE_AFTER
    feed(old, 1, commands.Basic.Nack(1))
    assert [outcome for outcome, _ in await first] == [PublishOutcome.NACKED]
    later = [
        asyncio.ensure_future(sender.send([Outgoing("", "q", body, PROPS)]))
        for body in (b"m2", b"m3")
    ]
    await turns(10)
    assert _bodies(new_wire) == []  # m1 is not confirmed yet
    feed(old, 1, commands.Basic.Ack(2))
    assert [outcome for outcome, _ in await second] == [PublishOutcome.ACKED]
    await turns(10)
    assert _bodies(new_wire) == [b"m2", b"m3"]
    third = asyncio.ensure_future(sender.send([Outgoing("", "q", b"m4", PROPS)]))
    await turns(4)
    assert _bodies(new_wire) == [b"m4"]  # (read once above) the new connection is the one now
    feed(new, 1, commands.Basic.Ack(3, multiple=True))
    for sending in (*later, third):
        assert [outcome for outcome, _ in await sending] == [PublishOutcome.ACKED]
    old.connection_lost(None)
    new.connection_lost(None)
    await sender.close()


def _bodies(transport: Transport) -> list[bytes]:
    return [f.value for f in transport.frames() if isinstance(f, pamqp_body.ContentBody)]


def _returning(link: Link) -> Callable[[str], Awaitable[Link]]:
    async def opened(name: str) -> Link:
        return link

    return opened
