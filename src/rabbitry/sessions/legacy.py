"""Moving tenants off their queues from before single-active-consumer.

A queue's arguments are fixed when it is declared: the tenant queues older versions declared,
``<ns>.tenant.<t>.session-removal``, cannot take ``x-single-active-consumer`` (the broker answers
406 PRECONDITION_FAILED), so the tenant's queue now has a new name, ``<ns>.tenant.<t>.removals``.
What the old queue still holds must not be lost, so DISPATCH, once it consumes, moves each
tenant off the old one (:func:`retire_legacy_queue`), in the background:

1. unbind the old queue from ``<ns>.tenants``: new requests go to the new queue only;
2. move every message of the old queue's retry tiers, then of the old queue, to the new queue,
   each acked on the old one only once the broker confirmed its copy (a retried request starts
   its attempts again);
3. delete the retry tiers, then the old queue, each only if it is empty and nobody consumes it
   (one atomic step on the broker), so a request arriving meanwhile, or a replica of the old
   version still consuming, keeps it for the next DISPATCH start. The old dead-letter queue
   stays, for an operator to read.

Replicas may do this at the same time: every message goes to one of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rabbitry.config import Settings
from rabbitry.errors import NotFound
from rabbitry.messaging import Declarer
from rabbitry.messaging.deadletters import revived
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import Binding, retry_queue_name
from rabbitry.sessions.topology import TenantsLayout

log = logging.getLogger(__name__)

MOVE_LIMIT = 100_000  # per queue and run: a queue refilled as fast as it drains is left for later


@dataclass(frozen=True, slots=True)
class Retired:
    """What :func:`retire_legacy_queue` did for one tenant."""

    found: bool  # the old queue existed
    moved: int  # messages moved to the new queue
    deleted: bool  # the old queue and its retry tiers are gone


async def retire_legacy_queue(
    settings: Settings, declarer: Declarer, publisher: Publisher, tenant: str
) -> Retired:
    """Unbind, empty into the new queue and delete ``tenant``'s old queue (see the module
    docstring); a tenant without one costs one passive declare."""
    layout = TenantsLayout(settings.namespace)
    legacy = layout.legacy_queue(tenant)
    try:
        await declarer.queue_status(legacy)
    except NotFound:
        return Retired(found=False, moved=0, deleted=True)
    binding = Binding(layout.tenants_exchange, legacy, layout.tenant_routing_key(tenant))
    await declarer.unbind(binding)
    tiers = [retry_queue_name(legacy, delay) for delay in settings.retry.tiers_ms()]
    target = layout.tenant_queue(tenant)
    moved = 0
    for queue in [*tiers, legacy]:
        moved += await _move(declarer, publisher, queue, target)
    deleted = True
    for queue in [*tiers, legacy]:
        try:
            deleted = await declarer.delete_idle_queue(queue) and deleted
        except NotFound:
            continue
    log.info("tenant %s: moved %d request(s) off %s (deleted: %s)", tenant, moved, legacy, deleted)
    return Retired(found=True, moved=moved, deleted=deleted)


async def _move(declarer: Declarer, publisher: Publisher, queue: str, target: str) -> int:
    moved = 0
    try:
        holding = await declarer.hold(queue)
    except NotFound:
        return 0
    async with holding:
        while moved < MOVE_LIMIT:
            taken = await holding.take(timeout=2.0)
            if taken is None:
                break
            result = await publisher.publish(revived(taken), Route("", target), use_fallback=False)
            if result.status is not PublishStatus.PUBLISHED:
                # Given back to the old queue when the holding closes; the next run moves it.
                log.warning("could not move a request off %s: %s", queue, result.error)
                break
            await holding.ack(taken)
            moved += 1
    return moved
