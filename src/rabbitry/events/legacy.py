"""The event-sourcing queues of earlier layouts, drained before the partitions are consumed.

Up to this version every change event went to one queue, ``<ns>.event-sourcing``, consumed by
every workflow worker at once (no single active consumer). Its arguments cannot be changed on
a live queue (RabbitMQ refuses to declare it again with other arguments), so the ordered
queues have new names (``<ns>.event-sourcing.p<k>``), and a worker that finds the old one
moves over without reordering an entity's events:

1. it declares the partitions, bound on ``<ns>.events``, then unbinds the old queue: from then
   on new events go to the partitions only (one published in between goes to both, and is
   stored once: the store keeps each message id once);
2. it stores what the old queue holds, as its only consumer (``basic.consume`` exclusive:
   other workers, and workers of the earlier version still running, wait their turn), the
   retry tiers of the old queue included, which give their messages back to it;
3. once the old queue and its retry tiers are empty and unused, it deletes them and consumes
   the partitions, whose events are all younger than what it stored.

Other workers of this version wait for the old queue to be gone before they consume the
partitions. The old dead-letter queue (``<ns>.event-sourcing.dlq``) stays for an operator
to read.

A change of ``events_partitions`` leaves the same kind of thing behind, and is mended the same
way at every start: bindings an earlier number of partitions made on the partition queues of
now are removed (a declaration adds bindings, never removes one, so a queue bound ``#`` when
there was one partition would go on taking a copy of every event), and the queues of
partitions beyond the new number are unbound, drained and deleted like the old queue (their
dead-letter queues stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from rabbitry.config import Settings
from rabbitry.errors import BrokerError, NotFound
from rabbitry.events.topology import ALL_KEYS, BUCKETS, EventsLayout, stale_keys, topology
from rabbitry.messaging import Declarer
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.topology import Binding, Topology, retry_queue_name
from rabbitry.messaging.worker import Worker

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between two looks at the old queue's depth
FIRST_PAUSE = 0.5
MAX_PAUSE = 10.0


async def drain_legacy(
    settings: Settings,
    subscription: Callable[[str, bool], Subscription],
    stopping: asyncio.Event,
) -> None:
    """Store what the old event-sourcing queue and the queues of former partitions hold and
    delete them, if there are any, after tidying the bindings (see the module docstring);
    returns once done, and when ``stopping``. ``subscription(queue, exclusive)`` is how the
    workflow worker stores a queue's change events. Broker trouble is waited out, backing
    off."""
    pause = FIRST_PAUSE
    while not stopping.is_set():
        try:
            await _drain(settings, subscription, stopping)
            return
        except (BrokerError, OSError, TimeoutError) as exc:
            log.warning("workflow: the old event-sourcing queue: %s; again in %.1fs", exc, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
            pause = min(pause * 2, MAX_PAUSE)


async def _drain(
    settings: Settings,
    subscription: Callable[[str, bool], Subscription],
    stopping: asyncio.Event,
) -> None:
    layout = EventsLayout(settings.namespace)
    exchange = layout.events_exchange
    partitions = settings.events_partitions
    amqp = settings.amqp
    declarer = await Declarer.connect(
        amqp.url, name="workflow-legacy", timeout=amqp.connect_timeout, rpc_timeout=amqp.rpc_timeout
    )
    async with declarer:
        old = await _former_partitions(declarer, layout, partitions)
        if await _exists(declarer, layout.legacy_queue):
            old.insert(0, layout.legacy_queue)  # the oldest events: stored first
        if old:
            log.warning("draining %s (of an earlier layout) before the partitions", ", ".join(old))
        await declarer.declare(topology(settings))  # the partitions, before their bindings change
        # Keys an earlier number of partitions bound to the ones of now (cheap, and nothing
        # else would tell they are there): each would send a copy of other partitions' events.
        for partition in range(partitions):
            queue = layout.partition_queue(partition)
            for key in stale_keys(partition, partitions):
                await declarer.unbind(Binding(exchange, queue, key))
        for queue in old:
            for key in ALL_KEYS:
                await declarer.unbind(Binding(exchange, queue, key))
        for queue in old:
            if not await _drain_one(settings, subscription, stopping, declarer, queue):
                return


async def _former_partitions(
    declarer: Declarer, layout: EventsLayout, partitions: int
) -> list[str]:
    """The queues of partitions beyond ``partitions`` that a larger number left. Each number
    of partitions K makes ``p0`` … ``p<K-1>``, so any of them means ``p<partitions>`` is there:
    one look when there are none."""
    found: list[str] = []
    for partition in range(partitions, BUCKETS):
        queue = layout.partition_queue(partition)
        if not await _exists(declarer, queue):
            break
        found.append(queue)
    return found


async def _drain_one(
    settings: Settings,
    subscription: Callable[[str, bool], Subscription],
    stopping: asyncio.Event,
    declarer: Declarer,
    old: str,
) -> bool:
    """Store what ``old`` and its retry tiers hold, as their only consumer, then delete them:
    whether it did (not when ``stopping``)."""
    tiers = [retry_queue_name(old, delay) for delay in settings.retry.tiers_ms()]
    worker = Worker(
        "workflow-legacy",
        # The old queue as its only consumer; a partition's has a single active one already
        # (and RabbitMQ refuses an exclusive consumer on it).
        [subscription(old, old == EventsLayout(settings.namespace).legacy_queue)],
        Topology(),
        amqp=settings.amqp,
        retry=settings.retry,
    )
    while not stopping.is_set():
        drained = asyncio.Event()
        running = asyncio.create_task(worker.run(drained))
        try:
            while not (stopping.is_set() or running.done()):
                if await _empty(declarer, old, tiers) is not False:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), POLL)
        finally:
            drained.set()  # the worker finishes what it holds, acks it and stops
            await running
        if stopping.is_set():
            return False
        if await _delete(declarer, old, tiers):
            log.warning("%s drained and deleted", old)
            return True
    return False


async def _exists(declarer: Declarer, queue: str) -> bool:
    try:
        await declarer.queue_status(queue)
    except NotFound:
        return False
    return True


async def _empty(declarer: Declarer, legacy: str, tiers: list[str]) -> bool | None:
    """Whether the old queue and its tiers hold no ready message; ``None`` once it is gone
    (another worker drained it)."""
    try:
        if (await declarer.queue_status(legacy)).messages:
            return False
    except NotFound:
        return None
    for tier in tiers:
        with contextlib.suppress(NotFound):
            if (await declarer.queue_size(tier)) > 0:
                return False
    return True


async def _delete(declarer: Declarer, legacy: str, tiers: list[str]) -> bool:
    """Delete the tiers, then the old queue, each only if empty and unused: whether all went.
    The tiers go first, so that none gives a message back to a queue that is gone."""
    for tier in tiers:
        if not await declarer.delete_idle_queue(tier):
            return False
    return await declarer.delete_idle_queue(legacy)
