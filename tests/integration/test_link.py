"""Link against the real broker: confirms, returns, closes, consumers, a broker-side kill.

Every test declares its own ``rabbitry-test-<uuid>`` queues and deletes them afterwards. Nothing
is skipped: with the broker down, the fixtures fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from helpers import AMQP_URL, close_connections
from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.link import Link, LinkClosed, Outgoing, PublishOutcome, Received
from rabbitry.amqp.properties import Properties

PERSISTENT = Properties(content_type="application/octet-stream", delivery_mode=2)


def _name() -> str:
    return f"rabbitry-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        yield await connection.channel()


@pytest.fixture
async def queue(channel: AbstractChannel) -> AsyncIterator[str]:
    name = _name()
    await channel.declare_queue(name, durable=True)
    yield name
    await channel.queue_delete(name)


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    link = await Link.connect(AMQP_URL, name=_name())
    await link.confirm_select()
    yield link
    await link.close()


async def _ready_count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


def _collector(
    link: Link, expected: int
) -> tuple[list[Received], asyncio.Event, Callable[..., None]]:
    got: list[Received] = []
    done = asyncio.Event()

    def on_delivery(delivery: Received) -> None:
        got.append(delivery)
        link.ack(delivery.delivery_tag)
        if len(got) >= expected:
            done.set()

    return got, done, on_delivery


async def test_published_message_arrives_with_its_body_and_header_types(
    link: Link, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    properties = Properties(
        content_type="application/json",
        headers={"rr_delay": Int64(5000), "rr_headers": b'{"x":["1"]}', "rr_job": "Job"},
        delivery_mode=2,
        priority=3,
        correlation_id="c-1",
        message_id="m-1",
        timestamp=1_700_000_000,
        type="job",
        app_id="tests",
    )
    assert await link.publish("", queue, b'{"hello":1}', properties) is PublishOutcome.ACKED

    consumer = await Link.connect(AMQP_URL, name=_name())
    raw = bytearray()
    original = consumer.data_received

    def spy(data: bytes) -> None:
        raw.extend(data)
        original(data)

    monkeypatch.setattr(consumer, "data_received", spy)
    got, done, on_delivery = _collector(consumer, 1)
    await consumer.consume(queue, on_delivery)
    await asyncio.wait_for(done.wait(), 10)
    await consumer.close()

    (delivery,) = got
    assert delivery.body == b'{"hello":1}'
    assert (delivery.exchange, delivery.routing_key, delivery.redelivered) == ("", queue, False)
    assert delivery.properties.headers == {
        "rr_delay": 5000,
        "rr_headers": b'{"x":["1"]}',
        "rr_job": "Job",
    }
    assert delivery.properties.message_id == "m-1"
    assert delivery.properties.timestamp == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    # The broker relays the table as written: Int64 stays 'l', bytes stay 'x'.
    assert b"\x08rr_delayl" + struct.pack(">q", 5000) in raw
    assert b'\x0arr_headersx\x00\x00\x00\x0b{"x":["1"]}' in raw


async def test_ten_thousand_published_in_one_call_are_all_acked_and_consumed(
    link: Link, queue: str, channel: AbstractChannel
) -> None:
    items = [Outgoing("", queue, b"%05d" % i + b"." * 251, PERSISTENT) for i in range(10_000)]
    outcomes = await link.publish_many(items)
    assert outcomes == [PublishOutcome.ACKED] * 10_000
    assert await _ready_count(channel, queue) == 10_000

    got, done, on_delivery = _collector(link, 10_000)
    await link.qos(1000)
    tag = await link.consume(queue, on_delivery)
    await asyncio.wait_for(done.wait(), 60)
    await link.cancel(tag)
    assert sorted(d.body[:5] for d in got) == [b"%05d" % i for i in range(10_000)]


async def test_unroutable_mandatory_message_is_returned(link: Link, queue: str) -> None:
    nowhere = _name()  # no queue has this name, so the default exchange cannot route it
    assert await link.publish("", nowhere, b"lost", PERSISTENT) is PublishOutcome.RETURNED
    batch = [
        Outgoing("", queue, b"kept", PERSISTENT),
        Outgoing("", nowhere, b"lost", PERSISTENT),
        Outgoing("", nowhere, b"dropped", PERSISTENT, mandatory=False),
        Outgoing("", queue, b"kept", PERSISTENT),
    ]
    outcomes = await link.publish_many(batch)
    assert outcomes == [
        PublishOutcome.ACKED,
        PublishOutcome.RETURNED,
        PublishOutcome.ACKED,
        PublishOutcome.ACKED,
    ]


async def test_publishing_to_a_missing_exchange_closes_the_link_with_404(
    link: Link, queue: str
) -> None:
    doomed = link.publish(_name(), "key", b"x", PERSISTENT)
    after = link.publish("", queue, b"y", PERSISTENT)
    with pytest.raises(LinkClosed) as caught:
        await doomed
    assert caught.value.reply_code == 404
    assert "NOT_FOUND" in caught.value.reply_text
    with pytest.raises(LinkClosed):
        await after
    with pytest.raises(LinkClosed) as closed:
        await link.closed
    assert closed.value.reply_code == 404
    assert not link.is_open
    with pytest.raises(LinkClosed):
        link.publish("", queue, b"z", PERSISTENT)


async def test_consumer_with_prefetch_gets_everything_and_acks_in_batches(
    link: Link, queue: str, channel: AbstractChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 3000
    await link.publish_many([Outgoing("", queue, b"m%d" % i, PERSISTENT) for i in range(count)])

    consumer = await Link.connect(AMQP_URL, name=_name())
    transport: Any = consumer._transport  # the socket writes are what "batched" means
    writes = 0
    write = transport.write

    def counting_write(data: bytes) -> None:
        nonlocal writes
        writes += 1
        write(data)

    monkeypatch.setattr(transport, "write", counting_write)
    got, done, on_delivery = _collector(consumer, count)
    await consumer.qos(100)
    await consumer.consume(queue, on_delivery)
    await asyncio.wait_for(done.wait(), 30)
    await consumer.close()  # unacked deliveries would go back to the queue here

    assert len(got) == count
    assert len({d.body for d in got}) == count
    assert writes < count / 10
    assert await _ready_count(channel, queue) == 0


async def test_broker_side_kill_fails_pending_publishes(queue: str) -> None:
    name = _name()
    link = await Link.connect(AMQP_URL, name=name)
    await link.confirm_select()
    window = [Outgoing("", queue, b"x" * 256, PERSISTENT) for _ in range(2000)]

    streaming = asyncio.Event()

    async def publish_forever() -> None:
        while True:
            await link.publish_many(window)
            streaming.set()

    publisher = asyncio.create_task(publish_forever())
    await asyncio.wait_for(streaming.wait(), 30)  # confirmed once, and on to the next window
    assert await asyncio.to_thread(close_connections, name, "test", exact=True) == 1

    with pytest.raises(LinkClosed) as failed:
        await asyncio.wait_for(publisher, 10)
    assert failed.value.reply_code == 320  # CONNECTION_FORCED
    with pytest.raises(LinkClosed) as closed:
        await asyncio.wait_for(asyncio.shield(link.closed), 10)
    assert closed.value.reply_code == 320
    assert "test" in closed.value.reply_text
    assert not link.is_open
    await link.close()  # a no-op on a dead link


async def test_connecting_with_bad_credentials_is_refused() -> None:
    with pytest.raises(LinkClosed) as refused:
        await Link.connect("amqp://guest:wrong@127.0.0.1:5672/", name=_name())
    assert refused.value.reply_code == 403


async def test_heartbeats_keep_an_idle_link_alive(queue: str) -> None:
    link = await Link.connect(AMQP_URL, name=_name(), heartbeat=1)
    try:
        await asyncio.sleep(3.5)  # the broker drops a peer silent for two intervals
        assert link.is_open
        await link.confirm_select()
        assert await link.publish("", queue, b"still here", PERSISTENT) is PublishOutcome.ACKED
    finally:
        await link.close()
