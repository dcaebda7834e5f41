"""Publish and consume throughput: Rabbitry against plain aio-pika, in one run, one broker.

Cases (256-byte JSON bodies, persistent, classic queues):
  (a) aio-pika publish, confirms pipelined in gathered windows of 1000
  (b) Rabbitry Publisher.publish_many, windows of 1000 (envelope encoding included)
  (c) aio-pika consume, manual ack, prefetch 1000
  (d) Rabbitry Consumer (handler per message, ack after it), prefetch 1000

Rounds are interleaved and the median is reported, because run-to-run spread on a shared
2-core machine is 10-20 %. Usage: python bench/publish_consume.py [--messages N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika

from common import AMQP_URL, PAYLOAD, body
from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link
from rabbitry.config import Settings
from rabbitry.messaging.consumer import Consumer, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.topology import Queue, Topology

WINDOW = 1000


async def aio_pika_publish(queue: str, n: int) -> float:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange
    payload = body()
    start = time.perf_counter()
    for offset in range(0, n, WINDOW):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        payload,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="application/json",
                        message_id=str(uuid.uuid4()),
                        headers={"rr_job": "bench"},
                    ),
                    routing_key=queue,
                    mandatory=True,
                )
                for _ in range(min(WINDOW, n - offset))
            )
        )
    elapsed = time.perf_counter() - start
    await connection.close()
    return n / elapsed


async def rabbitry_publish(queue: str, n: int) -> float:
    settings = Settings()
    route = Route("", queue)
    async with Publisher(settings.amqp) as publisher:
        await publisher.publish(Message(type="warm-up", payload={}), route)  # connect first
        start = time.perf_counter()
        for offset in range(0, n, WINDOW):
            batch = [
                (Message(type="bench", payload=PAYLOAD), route)
                for _ in range(min(WINDOW, n - offset))
            ]
            results = await publisher.publish_many(batch)
            if not all(r.ok for r in results):
                raise SystemExit(f"rabbitry publish failed: {results[0]}")
        elapsed = time.perf_counter() - start
    return n / elapsed


async def aio_pika_consume(queue: str, n: int) -> float:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    q = await channel.get_queue(queue)
    done = asyncio.Event()
    seen = 0
    start = 0.0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen, start
        if seen == 0:
            start = time.perf_counter()
        json.loads(message.body)
        await message.ack()
        seen += 1
        if seen == n:
            done.set()

    await q.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - start
    await connection.close()
    return n / elapsed


async def rabbitry_consume(queue: str, n: int) -> float:
    settings = Settings(prefetch=1000)
    link = await Link.connect(AMQP_URL, name="bench-consumer")
    await link.confirm_select()
    done = asyncio.Event()
    seen = 0
    start = 0.0

    async def handler(message: Message) -> None:
        nonlocal seen, start
        if seen == 0:
            start = time.perf_counter()
        seen += 1
        if seen == n:
            done.set()

    consumer = Consumer(
        settings.amqp, Subscription(queue, default=handler, strict=False), link, RetryPolicy()
    )
    await consumer.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop(timeout=5)
    await link.close()
    return n / elapsed


async def fill(queue: str, n: int) -> None:
    """Fill a queue for a consume case with Rabbitry-format messages."""
    settings = Settings()
    route = Route("", queue)
    async with Publisher(settings.amqp) as publisher:
        for offset in range(0, n, WINDOW):
            batch = [(Message(type="bench", payload=PAYLOAD), route)] * min(WINDOW, n - offset)
            await publisher.publish_many(batch)


Case = Callable[[str, int], Awaitable[float]]


async def main(n: int, rounds: int) -> None:
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    topology = Topology.of(queues=[Queue(queue)])
    cases: dict[str, Case] = {
        "a aio-pika publish (pipelined confirms)": aio_pika_publish,
        "b Rabbitry publish_many": rabbitry_publish,
        "c aio-pika consume (prefetch 1000)": aio_pika_consume,
        "d Rabbitry consumer (prefetch 1000)": rabbitry_consume,
    }
    figures: dict[str, list[float]] = {name: [] for name in cases}
    async with await Declarer.connect(AMQP_URL) as declarer:
        await declarer.declare(topology)
        try:
            for round_ in range(rounds):
                for name, case in cases.items():
                    await declarer.purge(queue)
                    if "consume" in name:
                        await fill(queue, n)
                    rate = await case(queue, n)
                    figures[name].append(rate)
                    print(f"round {round_ + 1} {name}: {rate:,.0f} msg/s", flush=True)
        finally:
            await declarer.delete(topology)
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\n{n:,} messages x {rounds} rounds, median msg/s:")
    for name, value in median.items():
        print(f"  {name:45s} {value:>10,.0f}")
    publish_ratio = (
        median["b Rabbitry publish_many"] / median["a aio-pika publish (pipelined confirms)"]
    )
    consume_ratio = (
        median["d Rabbitry consumer (prefetch 1000)"] / median["c aio-pika consume (prefetch 1000)"]
    )
    print(f"  publish ratio Rabbitry / aio-pika: {publish_ratio:.2f}x")
    print(f"  consume ratio Rabbitry / aio-pika: {consume_ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rounds))
