"""The event-sourcing queue of earlier versions, drained before the partitions are consumed.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from rabbitry.config import Settings
from rabbitry.errors import BrokerError, NotFound
from rabbitry.events.topology import EventsLayout, topology
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
    subscription: Callable[[str], Subscription],
    stopping: asyncio.Event,
) -> None:
    """Store what the old event-sourcing queue holds and delete it, if there is one (see the
    module docstring); returns at once when there is none, and when ``stopping``.
    ``subscription(queue)`` is how the workflow worker stores a queue's change events (it is
    asked for an exclusive one). Broker trouble is waited out, backing off."""
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
    subscription: Callable[[str], Subscription],
    stopping: asyncio.Event,
) -> None:
    layout = EventsLayout(settings.namespace)
    legacy = layout.legacy_queue
    tiers = [retry_queue_name(legacy, delay) for delay in settings.retry.tiers_ms()]
    amqp = settings.amqp
    declarer = await Declarer.connect(
        amqp.url, name="workflow-legacy", timeout=amqp.connect_timeout, rpc_timeout=amqp.rpc_timeout
    )
    async with declarer:
        if not await _exists(declarer, legacy):
            return
        log.warning("draining %s (of an earlier version) before the partitions", legacy)
        await declarer.declare(topology(settings))
        await declarer.unbind(Binding(layout.events_exchange, legacy, "#"))
        worker = Worker(
            "workflow-legacy",
            [subscription(legacy)],
            Topology(),
            amqp=amqp,
            retry=settings.retry,
        )
        while not stopping.is_set():
            drained = asyncio.Event()
            running = asyncio.create_task(worker.run(drained))
            try:
                while not (stopping.is_set() or running.done()):
                    if await _empty(declarer, legacy, tiers) is not False:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), POLL)
            finally:
                drained.set()  # the worker finishes what it holds, acks it and stops
                await running
            if stopping.is_set():
                return
            if await _delete(declarer, legacy, tiers):
                log.warning("%s drained and deleted; consuming the partitions", legacy)
                return


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
