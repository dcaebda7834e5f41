"""What tracing costs on the publish and consume paths, in one run, one broker.

Four publishers (``Publisher.publish_many``, windows of 1000) and four consumers (a handler
per message, prefetch 1000), 256-byte JSON bodies, persistent, a classic queue:
  (0) no middleware                         the baseline
  (1) a pass-through middleware             what any middleware costs
  (2) Tracing, no SDK set up                what the system pays when traces are off
  (3) Tracing with the SDK                  spans made and handed to a batch processor
                                            whose exporter drops them (no network)

Rounds are interleaved and the median is reported (run-to-run spread on a shared 2-core
machine is 10-20 %). Usage: python bench/tracing.py [--messages N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from common import AMQP_URL, PAYLOAD
from rabbitry import (
    Handler,
    Message,
    Middleware,
    Publisher,
    PublishNext,
    PublishResult,
    Route,
    Subscription,
    Tracing,
)
from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link
from rabbitry.config import Settings
from rabbitry.messaging.consumer import Consumer
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.topology import Queue, Topology

WINDOW = 1000


class Dropped(SpanExporter):
    """Takes every span and sends it nowhere: the SDK's cost without a collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class PassThrough(Middleware):
    """Overrides both sides and only calls on."""

    async def consume(self, message: Message, call_next: Handler) -> object:
        return await call_next(message)

    async def publish(
        self, message: Message, route: Route, call_next: PublishNext
    ) -> PublishResult:
        return await call_next(message, route)


def chains(provider: TracerProvider) -> dict[str, list[Middleware]]:
    return {
        "0 no middleware": [],
        "1 pass-through middleware": [PassThrough()],
        "2 Tracing, no SDK": [Tracing()],  # the global provider, unset: as in the system
        "3 Tracing, SDK": [Tracing(provider)],
    }


async def publish(queue: str, n: int, middleware: list[Middleware]) -> float:
    route = Route("", queue)
    async with Publisher(Settings().amqp, middleware=middleware) as publisher:
        await publisher.publish(Message(type="warm-up", payload={}), route)  # connect first
        start = time.perf_counter()
        for offset in range(0, n, WINDOW):
            batch = [
                (Message(type="bench", payload=PAYLOAD), route)
                for _ in range(min(WINDOW, n - offset))
            ]
            results = await publisher.publish_many(batch)
            if not all(r.ok for r in results):
                raise SystemExit(f"publish failed: {results[0]}")
        return n / (time.perf_counter() - start)


async def consume(queue: str, n: int, middleware: list[Middleware]) -> float:
    settings = Settings(prefetch=1000)
    link = await Link.connect(AMQP_URL, name="bench-tracing-consumer")
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

    subscription = Subscription(queue, default=handler, strict=False)
    consumer = Consumer(settings.amqp, subscription, link, RetryPolicy(), middleware=middleware)
    await consumer.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop(timeout=5)
    await link.close()
    return n / elapsed


async def main(n: int, rounds: int) -> None:
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    topology = Topology.of(queues=[Queue(queue)])
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    cases = chains(provider)
    figures: dict[str, list[float]] = {
        f"{side} {name}": [] for side in ("publish", "consume") for name in cases
    }
    async with await Declarer.connect(AMQP_URL) as declarer:
        await declarer.declare(topology)
        try:
            for round_ in range(rounds):
                for name, middleware in cases.items():
                    await declarer.purge(queue)
                    rate = await publish(queue, n, middleware)
                    figures[f"publish {name}"].append(rate)
                    print(f"round {round_ + 1} publish {name}: {rate:,.0f} msg/s", flush=True)
                    rate = await consume(queue, n, middleware)  # what was just published
                    figures[f"consume {name}"].append(rate)
                    print(f"round {round_ + 1} consume {name}: {rate:,.0f} msg/s", flush=True)
        finally:
            await declarer.delete(topology)
            provider.shutdown()
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\n{n:,} messages x {rounds} rounds, median msg/s (ratio to the baseline):")
    for side in ("publish", "consume"):
        base = median[f"{side} 0 no middleware"]
        for name in cases:
            value = median[f"{side} {name}"]
            print(f"  {side:8s} {name:28s} {value:>10,.0f}  {value / base:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rounds))
