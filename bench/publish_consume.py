"""Publish and consume throughput through the public API, as users call it, beside plain
aio-pika and the broker's own ceiling, in one run, on one broker: the README's claim.

Every case sends the same RoadRunner-format messages (seven ``rr_*`` headers, ``message_id``,
``timestamp``, a 256-byte JSON body), persistent, on a fresh durable classic queue:

  publish: ceiling (the socket probe of ``bench/ceiling.py``) | aio-pika 10.2 (confirms
           pipelined in gathered windows of 1000) | ``rabbitry.Publisher.publish_many``
           (windows of 1000) | ``rabbitry.Publisher.publish``, 1000 concurrent calls a window
  consume: ceiling (one ``multiple`` ack per read) | aio-pika 10.2 (manual ack, prefetch 1000)
           | ``rabbitry.Worker`` with one ``Subscription`` (prefetch 1000), run as users run it

Rabbitry is reached only through ``from rabbitry import ...``: what users get, not the
internal ``Consumer`` (``bench/ceiling.py`` measures that one). Rounds are interleaved; ratios
are taken within each round (to that round's ceiling and aio-pika), then their median, because
the load of a shared 2-core machine drifts between rounds more than within one.

Usage: python bench/publish_consume.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from ceiling import (
    SETTINGS,
    URL,
    aio_pika_consume,
    aio_pika_publish,
    fill,
    probe_consume,
    probe_publish,
    rabbitry_publish_concurrent,
    rabbitry_publish_many,
)
from rabbitry import Message, Queue, Subscription, Topology, Worker
from rabbitry.amqp.declarer import Declarer  # the bench's own queue, outside the measured cases

Case = Callable[[str, int], Awaitable[float]]


async def worker_consume(queue: str, count: int) -> float:
    done, stopping = asyncio.Event(), asyncio.Event()
    seen, start = 0, 0.0

    async def handler(_: Message) -> None:
        nonlocal seen, start
        if not seen:
            start = time.perf_counter()
        seen += 1
        if seen == count:
            done.set()

    worker = Worker(
        "bench",
        [Subscription(queue, default=handler, strict=False)],
        Topology.of(queues=[Queue(queue)]),
        amqp=SETTINGS,
    )
    running = asyncio.create_task(worker.run(stopping))
    await done.wait()
    elapsed = time.perf_counter() - start
    stopping.set()
    await running
    return count / elapsed


PUBLISH: dict[str, Case] = {
    "ceiling (socket probe)": probe_publish,
    "aio-pika 10.2, gathered windows of 1000": aio_pika_publish,
    "Rabbitry Publisher.publish_many, windows of 1000": rabbitry_publish_many,
    "Rabbitry Publisher.publish, 1000 concurrent": rabbitry_publish_concurrent,
}
CONSUME: dict[str, Case] = {
    "ceiling (one multiple ack per read)": probe_consume,
    "aio-pika 10.2, manual ack, prefetch 1000": aio_pika_consume,
    "Rabbitry Worker, prefetch 1000": worker_consume,
}


async def main(count: int, rounds: int) -> None:
    queue = f"bench.api.{uuid.uuid4().hex[:8]}"
    topology = Topology.of(queues=[Queue(queue)])
    figures: dict[str, dict[str, list[float]]] = {
        "publish": {name: [] for name in PUBLISH},
        "consume": {name: [] for name in CONSUME},
    }
    async with await Declarer.connect(URL, name="bench") as declarer:
        await declarer.declare(topology)
        try:
            for round_ in range(rounds):
                for kind, cases in (("publish", PUBLISH), ("consume", CONSUME)):
                    for name, case in cases.items():
                        await declarer.purge(queue)
                        if kind == "consume":
                            await fill(queue, count)
                        figures[kind][name].append(await case(queue, count))
                        rate = figures[kind][name][-1]
                        print(f"round {round_ + 1} {kind} {name}: {rate:,.0f}/s", flush=True)
        finally:
            await declarer.delete(topology)
    print(f"\n{count:,} messages x {rounds} rounds, RoadRunner format, medians:")
    print(f"  {'case':58s} {'msg/s':>9s} {'vs ceiling':>11s} {'vs aio-pika':>12s}")
    for kind, rates in figures.items():
        ceiling, aio_pika = (rates[name] for name in list(rates)[:2])
        for name, values in rates.items():
            to_ceiling = [v / c for v, c in zip(values, ceiling, strict=True)]
            to_aio_pika = [v / a for v, a in zip(values, aio_pika, strict=True)]
            print(
                f"  {kind + ': ' + name:58s} {statistics.median(values):>9,.0f}"
                f" {statistics.median(to_ceiling):>10.2f}x {statistics.median(to_aio_pika):>11.2f}x"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rounds))
