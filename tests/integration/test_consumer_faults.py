"""Consumers when things go wrong, on the real broker: deliveries a foreign publisher wrote that
do not decode, retry copies the broker does not confirm in time or returns, copies keeping the
properties a reply needs, and a shutdown while the broker has stopped reading.

Each test runs on a work queue of its own namespace (``Q``, ``Q.dlq``, ``Q.retry.<ms>``) and
looks at the queues the way an operator would: with pika and the broker's own counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING

from helpers import at_least, publish_json, work
from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link, Outgoing
from rabbitry.config import Settings
from rabbitry.messaging.consumer import Consumer, Reject, Retry, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.sender import Sender
from rabbitry.messaging.topology import (
    Exchange,
    ExchangeType,
    Queue,
    Topology,
    dlq_name,
    retry_queue_name,
    work_queue,
)
from rabbitry.messaging.worker import Worker

if TYPE_CHECKING:
    from conftest import BrokerProbe, Endpoint, Eventually, WorkerRunner

JSON = "application/json"


# --- 1. a delivery the decoder cannot read never drops the connection --------------------------


async def test_a_millisecond_timestamp_from_a_java_publisher_is_read_as_its_instant(
    settings: Settings, broker: BrokerProbe, run_worker: WorkerRunner, eventually: Eventually
) -> None:
    queue, topology = work(settings)
    seen: list[Message] = []

    async def handle(message: Message) -> None:
        seen.append(message)

    sent_at = dt.datetime(2026, 11, 27, 9, 15, 30, 125000, tzinfo=dt.UTC)
    async with run_worker([Subscription(queue, handlers={"t": handle})], topology):
        await broker.publish(
            "",
            queue,
            b"{}",
            headers={"rr_job": "t"},
            content_type=JSON,
            timestamp=int(sent_at.timestamp() * 1000),  # what Java's AMQP clients write
        )
        await eventually(at_least(seen, 1), what="the message to be handled")
    assert seen[0].timestamp == sent_at


async def test_a_message_id_that_is_not_utf8_is_dead_lettered_and_the_next_message_is_handled(
    settings: Settings, broker: BrokerProbe, run_worker: WorkerRunner, eventually: Eventually
) -> None:
    queue, topology = work(settings)
    handled: list[str] = []

    async def handle(message: Message) -> None:
        handled.append(message.payload["n"])

    async with run_worker([Subscription(queue, handlers={"t": handle})], topology):
        for n, message_id in (("bad", b"id-\xff\xfe"), ("good", b"id-ok")):
            await broker.publish(
                "",
                queue,
                json.dumps({"n": n}).encode(),
                headers={"rr_job": "t"},
                content_type=JSON,
                message_id=message_id,
            )
        await eventually(at_least(handled, 1), what="the good message to be handled")
        await eventually(lambda: _ready(broker, dlq_name(queue), 1), what="the dead letter")
    assert handled == ["good"]
    (dead,) = await broker.get_all(dlq_name(queue))
    assert "message_id is not UTF-8" in dead.headers["x-rabbitry-reason"]
    assert dead.properties.message_id == b"id-\xff\xfe"  # the publisher's bytes, kept
    assert json.loads(dead.body) == {"n": "bad"}
    assert await broker.counts(queue) == (0, 0)  # not redelivered, not stuck


async def test_a_routing_key_that_is_not_utf8_is_dead_lettered_not_a_crash_loop(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue = f"{settings.namespace}.work"
    exchange = f"{settings.namespace}.topic"
    topology = work_queue(queue, policy=settings.retry, bindings=[(exchange, "#")]) | (
        Topology.of(exchanges=[Exchange(exchange, ExchangeType.TOPIC)])
    )
    handled: list[str] = []

    async def handle(message: Message) -> None:
        handled.append(message.routing_key)

    async with run_worker([Subscription(queue, handlers={"t": handle})], topology):
        for key in (b"orders.\xff", b"orders.ok"):
            # pika writes a bytes routing key as it is, as a foreign publisher might.
            await broker.publish(exchange, key, b"{}", headers={"rr_job": "t"}, content_type=JSON)  # type: ignore[arg-type]
        await eventually(at_least(handled, 1), what="the good message to be handled")
        await eventually(lambda: _ready(broker, dlq_name(queue), 1), what="the dead letter")
    assert handled == ["orders.ok"]
    (dead,) = await broker.get_all(dlq_name(queue))
    assert "routing key is not UTF-8" in dead.headers["x-rabbitry-reason"]


# --- 2. a copy not confirmed in time no longer wedges the consumer -------------------------------


async def test_a_retry_copy_not_confirmed_in_time_gives_the_original_back(
    settings: Settings, declarer: Declarer, endpoint: Endpoint, eventually: Eventually
) -> None:
    queue, topology = work(settings)
    warm = f"{settings.namespace}.warm"
    await declarer.declare(topology | Topology.of(queues=[Queue(warm)]))
    amqp = dataclasses.replace(settings.amqp, prefetch=1, concurrency=1)
    calls: list[str] = []

    async def handle(message: Message) -> None:
        calls.append(message.payload)
        if calls.count(message.payload) == 1 and message.payload == "a":
            raise Retry()

    # The copies go through the proxy, which the test freezes; the consumer's own connection
    # goes straight to the broker and stays healthy.
    await endpoint.open("forward")
    sender = Sender(dataclasses.replace(amqp, url=endpoint.url, publish_timeout=1.0), "t-forward")
    link = await Link.connect(settings.amqp.url, name=f"{settings.namespace}-consumer")
    consumer = Consumer(
        amqp, Subscription(queue, handlers={"t": handle}), link, settings.retry, sender=sender
    )
    try:
        await sender.send([Outgoing("", warm, b"{}")])  # the copies' connection is up
        await consumer.start()
        endpoint.freeze()
        await publish_json(settings, queue, "a", "b")
        # prefetch 1: had "a" stayed unsettled, "b" would never come.
        await eventually(at_least(calls, 3), timeout=30, what="a, a again, then b")
        assert calls == ["a", "a", "b"]
    finally:
        endpoint.thaw()
        await consumer.stop(5)
        await link.close()
        await sender.close()


# --- 10. a returned retry copy does not re-run the handler in a hot loop ------------------------


async def test_a_retry_whose_queue_is_missing_is_dead_lettered_with_that_reason(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    first_tier = retry_queue_name(queue, settings.retry.tiers_ms()[0])
    calls: list[object] = []

    async def handle(message: Message) -> None:
        calls.append(message.payload)
        raise RuntimeError("downstream is down")

    async with run_worker([Subscription(queue, handlers={"t": handle})], topology):
        await declarer.delete(Topology.of(queues=[Queue(first_tier)]))  # an operator's mistake
        await publish_json(settings, queue, "p")
        await eventually(lambda: _ready(broker, dlq_name(queue), 1), what="the dead letter")
        await asyncio.sleep(0.5)  # room for a hot loop to show itself, had there been one
    assert calls == ["p"]
    (dead,) = await broker.get_all(dlq_name(queue))
    reason = dead.headers["x-rabbitry-reason"]
    assert f"retry queue {first_tier} is missing" in reason and "downstream is down" in reason


# --- 13. copies keep reply_to and expiration ------------------------------------------------------


async def test_retry_and_dead_letter_copies_keep_reply_to_and_expiration(
    settings: Settings, broker: BrokerProbe, run_worker: WorkerRunner, eventually: Eventually
) -> None:
    slow = settings.model_copy(update={"retry_base_delay": 30.0, "retry_max_delay": 30.0})
    queue, topology = work(slow)

    async def retry(_: Message) -> None:
        raise Retry()

    async def reject(_: Message) -> None:
        raise Reject("never")

    handlers = {"retry": retry, "reject": reject}
    retry_queue = retry_queue_name(queue, 30_000)
    async with run_worker([Subscription(queue, handlers=handlers)], topology, settings=slow):
        for job in ("retry", "reject"):
            await broker.publish(
                "",
                queue,
                b"{}",
                headers={"rr_job": job},
                content_type=JSON,
                reply_to="amq.rabbitmq.reply-to.caller",
                expiration="600000",
            )
        await eventually(lambda: _ready(broker, retry_queue, 1), what="the retry copy")
        await eventually(lambda: _ready(broker, dlq_name(queue), 1), what="the dead letter")
    for copy in (*await broker.get_all(retry_queue), *await broker.get_all(dlq_name(queue))):
        assert copy.properties.reply_to == "amq.rabbitmq.reply-to.caller"
        assert copy.properties.expiration == "600000"


# --- 4. shutdown completes when the broker has stopped reading -----------------------------------


async def test_a_worker_stops_within_its_bounds_when_the_broker_stops_reading(
    settings: Settings, declarer: Declarer, endpoint: Endpoint
) -> None:
    queue, topology = work(settings)
    await declarer.declare(topology)

    async def handle(_: Message) -> None:
        return None

    await endpoint.open("forward")
    amqp = dataclasses.replace(settings.amqp, url=endpoint.url, rpc_timeout=1.0, drain_timeout=1.0)
    worker = Worker(
        f"{settings.namespace}-worker",
        [Subscription(queue, handlers={"t": handle})],
        topology,
        amqp=amqp,
        retry=settings.retry,
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    try:
        await asyncio.wait_for(worker.connected.wait(), 20)
        endpoint.freeze()  # no FIN, no RST: the broker just stops reading and answering
        stopping.set()
        # basic.cancel gets no reply: without a bound, this would wait forever.
        await asyncio.wait_for(running, 30)
    finally:
        endpoint.thaw()
        running.cancel()


# --- helpers ------------------------------------------------------------------------------------


async def _ready(broker: BrokerProbe, queue: str, count: int) -> bool:
    return (await broker.counts(queue))[0] >= count
