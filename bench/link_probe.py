"""Link vs aio-pika in one run: 256-byte persistent messages, confirmed publish, acked consume.

Publishing goes in windows of 1000 (Link.publish_many; aio-pika gathers 1000 confirms), the
consumer runs with prefetch 1000 and acks each message. Client CPU per message is printed too:
the broker shares the box, so CPU saved in the client is throughput for the broker.

    .venv/bin/python bench/link_probe.py [--messages 100000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika

from common import AMQP_URL
from rabbitry.amqp.link import Link, Outgoing, PublishOutcome, Received
from rabbitry.amqp.properties import Properties

BODY = b'{"job":"probe","payload":"' + b"x" * 228 + b'"}'
WINDOW = 1000
PREFETCH = 1000
PROPERTIES = Properties(content_type="application/json", delivery_mode=2)

Result = tuple[float, float]  # messages per second, client CPU microseconds per message


async def _timed(count: int, run: Callable[[], Awaitable[None]]) -> Result:
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return count / wall, cpu / count * 1e6


async def link_publish(queue: str, count: int) -> Result:
    link = await Link.connect(AMQP_URL, name="probe-publish")
    await link.confirm_select()
    window = [Outgoing("", queue, BODY, PROPERTIES) for _ in range(WINDOW)]

    async def run() -> None:
        for _ in range(count // WINDOW):
            outcomes = await link.publish_many(window)
            assert all(outcome is PublishOutcome.ACKED for outcome in outcomes)

    result = await _timed(count, run)
    await link.close()
    return result


async def link_consume(queue: str, count: int) -> Result:
    link = await Link.connect(AMQP_URL, name="probe-consume")
    done = asyncio.Event()
    received = 0

    def on_delivery(delivery: Received) -> None:
        nonlocal received
        link.ack(delivery.delivery_tag)
        received += 1
        if received == count:
            done.set()

    async def run() -> None:
        await link.qos(PREFETCH)
        await link.consume(queue, on_delivery)
        await done.wait()

    result = await _timed(count, run)
    await link.close()
    return result


async def pika_publish(queue: str, count: int) -> Result:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange

    async def run() -> None:
        for _ in range(count // WINDOW):
            message = aio_pika.Message(
                BODY,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await asyncio.gather(*(exchange.publish(message, queue) for _ in range(WINDOW)))

    result = await _timed(count, run)
    await connection.close()
    return result


async def pika_consume(queue: str, count: int) -> Result:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    done = asyncio.Event()
    received = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal received
        await message.ack()
        received += 1
        if received == count:
            done.set()

    async def run() -> None:
        declared = await channel.get_queue(queue, ensure=False)
        await declared.consume(on_message)
        await done.wait()

    result = await _timed(count, run)
    await connection.close()
    return result


async def main(messages: int, rounds: int) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    queue = f"rabbitry-bench-{uuid.uuid4().hex[:12]}"
    await channel.declare_queue(queue, durable=True)
    results: dict[str, list[Result]] = {}
    cases = [
        ("Link publish", link_publish),
        ("Link consume", link_consume),
        ("aio-pika publish", pika_publish),
        ("aio-pika consume", pika_consume),
    ]
    try:
        for _ in range(rounds):
            for label, case in cases:
                results.setdefault(label, []).append(await case(queue, messages))
    finally:
        await channel.queue_delete(queue)
        await connection.close()

    def median(label: str, index: int) -> float:
        values = sorted(result[index] for result in results[label])
        return values[len(values) // 2]

    print(f"{messages} messages x {rounds} round(s), 256-byte persistent bodies, medians")
    print(f"{'case':<18}{'msg/s':>10}{'client CPU µs/msg':>20}")
    for label, _ in cases:
        print(f"{label:<18}{median(label, 0):>10,.0f}{median(label, 1):>20.1f}")
    for kind in ("publish", "consume"):
        ratio = median(f"Link {kind}", 0) / median(f"aio-pika {kind}", 0)
        print(f"Link / aio-pika {kind}: {ratio:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rounds))
