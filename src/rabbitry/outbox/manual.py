"""Manual insertion: a user sends one record to a registry queue (the back-office ▶ action).

The queue must be in the registry, active, and allow manual insertion. Whether the record fits
the queue is not checked here: that is the business logic of the queue's consumer.
``manual_processing_mode`` decides what happens next:

* ``rabbit`` — publish now; if the broker cannot take it, the publisher's fallback stores it
  as a contingency row, which the relay re-publishes;
* ``db`` — store it with ``origin=manual`` and let the requeue command send it, keeping a
  record of every manual action with the contingency rows.
"""

from __future__ import annotations

from rabbitry.config import ManualProcessingMode, Settings
from rabbitry.errors import NotFound, Refused
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishResult, PublishStatus, Route
from rabbitry.outbox.filters import Origin
from rabbitry.outbox.registry import get_queue
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


class ManualInsertionRefused(Refused):
    """The queue exists but does not take manual insertions (or is no longer active)."""


async def send_manually(
    settings: Settings,
    db: Database,
    publisher: Publisher,
    queue: str,
    message: Message,
    *,
    routing_key: str | None = None,
) -> PublishResult:
    """Send ``message`` to registry queue ``queue`` as a user's manual action (with
    ``routing_key`` instead of the entry's, when the entry's is a template a caller filled).

    Returns ``PUBLISHED`` (mode rabbit, confirmed), or ``PERSISTED`` (mode db, or mode rabbit
    with the broker down). Raises :class:`NotFound` for an unknown queue,
    :class:`ManualInsertionRefused` when the queue does not allow it, and
    :class:`~rabbitry.errors.StorageError` if the message could not be stored either.
    """
    entry = await get_queue(db, queue)
    if entry is None:
        raise NotFound(f"queue {queue!r} is not in the registry (see `rabbitry queues list`)")
    if not entry.active:
        raise ManualInsertionRefused(f"queue {queue!r} was removed from the registry")
    if not entry.allow_manual_insertion:
        raise ManualInsertionRefused(f"queue {queue!r} does not allow manual insertion")
    key = entry.routing_key if routing_key is None else routing_key
    route = Route(entry.exchange, key, queue=entry.name)
    if settings.manual_processing_mode is ManualProcessingMode.DB:
        await Outbox(db).add([(route, message, "")], origin=Origin.MANUAL)
        return PublishResult(
            message.id, PublishStatus.PERSISTED, "stored for the requeue command (mode db)"
        )
    return await publisher.publish(message, route)
