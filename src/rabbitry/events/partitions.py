"""Sharing the event-sourcing partitions among the workflow workers that run.

Each partition queue has a single active consumer: the broker makes the first consumer that
subscribed the active one, and the others stand by. Every worker subscribes to every partition,
so the first worker to start is active on all of them and the ones started after it would only
stand by. Each worker therefore looks, every :data:`SHARE_EVERY` seconds, at how many workers
consume the partitions (the most consumers any partition queue has) and at the partitions it
was delivered messages from since the last look (it is active on those). Holding more than its
share, ``ceil(partitions / workers)``, it hands one of them over: its batcher for that
partition starts no new batch and lets the ones in the database end (their acks go out), then
the partition's connection closes. The broker requeues what it held unacked and makes the next
consumer active in one step, so the next worker takes the partition from its oldest message
on, in order; the worker subscribes again at once, standing by behind it. One partition at a
time, until no worker holds more than its share.

An idle partition delivers nothing, so a worker cannot tell whether it is active there: it
keeps it. That costs nothing while it is idle, and once messages flow, the next looks share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Collection, Sequence

from rabbitry.errors import RabbitryError
from rabbitry.messaging import Declarer
from rabbitry.messaging.settings import AmqpSettings

log = logging.getLogger(__name__)

SHARE_EVERY = 2.0
"""Seconds between two looks at how the partitions are shared (each jittered by a quarter)."""


def share(partitions: int, workers: int) -> int:
    """The most partitions one of ``workers`` holds when they are shared out."""
    return math.ceil(partitions / max(workers, 1))


def to_hand_over(active: Collection[int], consumers: Sequence[int], partitions: int) -> bool:
    """Whether a worker active on the partitions ``active`` holds more than its share, with
    ``consumers`` the consumer count of each partition queue (one per worker that runs)."""
    workers = max(consumers, default=1)
    return workers > 1 and len(active) > share(partitions, workers)


HandOver = Callable[[int], Awaitable[None]]
"""Hands partition ``n`` over to the next worker (and subscribes to it again, standing by)."""


class Sharing:
    """Counts the deliveries of each partition (:meth:`delivered`) and hands partitions over
    while this worker holds more than its share (:meth:`run`)."""

    def __init__(
        self,
        amqp: AmqpSettings,
        queues: Sequence[str],
        hand_over: HandOver,
        *,
        every: float = SHARE_EVERY,
    ) -> None:
        self._amqp = amqp
        self._queues = list(queues)
        self._hand_over = hand_over
        self._every = every
        self._delivered = [0] * len(queues)
        self.handed_over = 0
        """Partitions handed over so far."""

    def delivered(self, partition: int, count: int) -> None:
        """``count`` messages of ``partition`` reached this worker."""
        self._delivered[partition] += count

    async def run(self, stopping: asyncio.Event) -> None:
        """Look every ``every`` seconds until ``stopping``; a broker that does not answer is
        asked again at the next look."""
        declarer: Declarer | None = None
        try:
            while not stopping.is_set():
                pause = self._every * random.uniform(0.75, 1.25)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), pause)
                if stopping.is_set():
                    return
                active = [p for p, count in enumerate(self._delivered) if count]
                self._delivered = [0] * len(self._queues)
                try:
                    if declarer is None:
                        declarer = await Declarer.connect(
                            self._amqp.url,
                            name="workflow-partitions",
                            timeout=self._amqp.connect_timeout,
                            rpc_timeout=self._amqp.rpc_timeout,
                        )
                    consumers = [(await declarer.queue_status(q)).consumers for q in self._queues]
                except RabbitryError as exc:
                    log.debug("partitions: cannot count their consumers now: %s", exc)
                    if declarer is not None:
                        with contextlib.suppress(Exception):
                            await declarer.close()
                    declarer = None
                    continue
                if not to_hand_over(active, consumers, len(self._queues)):
                    continue
                partition = random.choice(active)
                log.info(
                    "partitions: active on %d of %d with %d workers; handing %s over",
                    len(active),
                    len(self._queues),
                    max(consumers),
                    self._queues[partition],
                )
                await self._hand_over(partition)
                self.handed_over += 1
                self._delivered = [0] * len(self._queues)  # the next look counts afresh
        finally:
            if declarer is not None:
                with contextlib.suppress(Exception):
                    await declarer.close()
