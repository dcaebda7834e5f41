"""Requeue throughput from PostgreSQL against the plain Rabbitry publisher, and its memory.

Cases (256-byte JSON bodies, persistent, one classic queue, in one run, one broker):
  (a) Rabbitry Publisher.publish_many, windows of BATCH: the messages built in memory
  (b) `rabbitry requeue` engine over N pending ledger rows in PostgreSQL: lease a batch,
      rebuild each message, publish_many without fallback, mark processed; until none is left

The aim: (b) >= 0.5x (a), with RSS growing less than 50 MB while (b) streams N rows (RSS is
sampled every 20 ms; tracemalloc would slow the very loop being timed).

Usage: python bench/outbox.py [--rows 100000] [--batch 500] [--rounds 1] [--pg DSN]
(DSN default postgresql://postgres@127.0.0.1:5432/postgres). A database
``rabbitry_bench_<hex>`` is created for the run and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import delete

from common import AMQP_URL, PAYLOAD, POSTGRES_ADMIN, body, fresh_database
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import Queue, Topology
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.outbox.requeue import RequeueOptions, requeue
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


def messages(n: int) -> Iterator[Message]:
    raw = body()
    for _ in range(n):
        yield Message(type="bench", payload=PAYLOAD, raw_body=raw)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Peak RSS while a block runs."""

    def __init__(self) -> None:
        self.start = self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssSampler:
        self.start = self.peak = rss_mb()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_mb())

    @property
    def growth(self) -> float:
        return self.peak - self.start


async def seed(db: Database, route: Route, rows: int) -> None:
    ledger = Outbox(db)
    chunk: list[tuple[Route, Message, str]] = []
    for message in messages(rows):
        chunk.append((route, message, "bench"))
        if len(chunk) == 5000:
            await ledger.add(chunk, origin=ledger.origin)
            chunk = []
    if chunk:
        await ledger.add(chunk, origin=ledger.origin)


async def plain_publish(settings: Settings, route: Route, rows: int, batch: int) -> float:
    async with Publisher(settings.amqp, name="bench-plain") as publisher:
        await publisher.publish(Message(type="warm-up", payload={}), route)
        source = messages(rows)
        start = time.perf_counter()
        for offset in range(0, rows, batch):
            window = [(next(source), route) for _ in range(min(batch, rows - offset))]
            results = await publisher.publish_many(window, use_fallback=False)
            if not all(r.ok for r in results):
                raise SystemExit(f"publish failed: {results[0].error}")
        return rows / (time.perf_counter() - start)


async def requeue_all(
    settings: Settings, db: Database, route: Route, rows: int, batch: int
) -> tuple[float, RssSampler]:
    async with Publisher(settings.amqp, name="bench-requeue") as publisher:
        await publisher.publish(Message(type="warm-up", payload={}), route)
        async with RssSampler() as memory:
            start = time.perf_counter()
            report = await requeue(
                Outbox(db), publisher, RequeueFilter(), options=RequeueOptions(batch_size=batch)
            )
            elapsed = time.perf_counter() - start
    if report.published != rows or report.failed:
        raise SystemExit(f"requeue: {report.summary()}")
    return rows / elapsed, memory


async def main(rows: int, batch: int, rounds: int, admin_dsn: str) -> None:
    queue = f"bench.outbox.{uuid.uuid4().hex[:8]}"
    topology = Topology.of(queues=[Queue(queue)])
    route = Route("", queue)
    settings = Settings(amqp_url=AMQP_URL, publish_timeout=30)
    plain_rates: list[float] = []
    requeue_rates: list[float] = []
    growths: list[float] = []
    async with await Declarer.connect(AMQP_URL) as declarer, fresh_database(admin_dsn) as db:
        await declarer.declare(topology)
        try:
            for round_ in range(1, rounds + 1):
                async with db.engine.begin() as connection:
                    await connection.execute(delete(OutboxMessageRecord))
                started = time.perf_counter()
                await seed(db, route, rows)
                seeded = time.perf_counter() - started
                print(f"round {round_}: seeded {rows:,} pending rows in {seeded:.1f}s", flush=True)
                plain = await plain_publish(settings, route, rows, batch)
                print(f"  (a) publisher publish_many:  {plain:>9,.0f} msg/s", flush=True)
                await declarer.purge(queue)
                rate, memory = await requeue_all(settings, db, route, rows, batch)
                print(
                    f"  (b) requeue from PostgreSQL: {rate:>9,.0f} rows/s  "
                    f"({rate / plain:.2f}x; RSS {memory.start:.0f} -> {memory.peak:.0f} MB)",
                    flush=True,
                )
                left = await Outbox(db).count(RequeueFilter())
                in_queue = await declarer.queue_size(queue)
                if left or in_queue != rows + 1:  # + the warm-up message
                    raise SystemExit(f"requeue left {left} pending, {in_queue} in the queue")
                await declarer.purge(queue)
                plain_rates.append(plain)
                requeue_rates.append(rate)
                growths.append(memory.growth)
        finally:
            await declarer.delete(topology)
    ratios = [r / p for r, p in zip(requeue_rates, plain_rates, strict=True)]
    print(f"\n{rows:,} rows, batches of {batch}, {rounds} round(s), medians:")
    print(f"  (a) publisher publish_many:  {statistics.median(plain_rates):>9,.0f} msg/s")
    print(f"  (b) requeue from PostgreSQL: {statistics.median(requeue_rates):>9,.0f} rows/s")
    print(
        f"  requeue / publisher: {statistics.median(ratios):.2f}x "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})   aim >= 0.5x"
    )
    print(f"  RSS growth while streaming {rows:,} rows: {max(growths):.1f} MB max   aim < 50 MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pg", default=POSTGRES_ADMIN)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.batch, args.rounds, args.pg))
