"""Rabbitry's topology conventions: work queues with their retry tiers and dead-letter queue.

Names of dead-letter and retry queues are computed from their work queue, never typed: for a
durable work queue ``Q`` there is ``Q.dlq`` and one ``Q.retry.<ms>`` per retry delay tier. A
retry queue holds messages for its TTL and then dead-letters them back to ``Q`` through the
default exchange, so a retry never spins in a hot requeue loop.

As quorum queues (for a cluster) the work and retry queues dead-letter at least once
(``x-dead-letter-strategy: at-least-once``, which RabbitMQ honours only with
``x-overflow: reject-publish``): a message whose retry delay expires while the work queue
cannot take it (no quorum, a node down) stays in the retry queue until it can, where
RabbitMQ's default for quorum queues, at most once, drops it. They also carry an explicit
delivery limit (:data:`DELIVERY_LIMIT`), so a message that kills its consumer every time
ends in ``Q.dlq``; the dead-letter queue has none, so reading dead letters never drops one.

Names from users are checked here too. The specs themselves (:class:`Exchange`,
:class:`Queue`, :class:`Binding`, :class:`Topology`) are :mod:`rabbitry.amqp.spec`'s,
re-exported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.spec import Arguments, Binding, Exchange, ExchangeType, Queue, Topology
from rabbitry.errors import Invalid
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settings import QueueType

__all__ = [
    "DELIVERY_LIMIT",
    "Arguments",
    "Binding",
    "Exchange",
    "ExchangeType",
    "Queue",
    "Topology",
    "check_name",
    "check_routing_key",
    "dlq_name",
    "retry_queue_name",
    "work_queue",
]


def dlq_name(queue: str) -> str:
    """The dead-letter queue of work queue ``queue`` (``shop.emails.dlq``)."""
    return f"{queue}.dlq"


def retry_queue_name(queue: str, delay_ms: int) -> str:
    """The retry queue where ``queue``'s messages wait ``delay_ms`` (``shop.emails.retry.1000``)."""
    return f"{queue}.retry.{delay_ms}"


DELIVERY_LIMIT = 20
"""Deliveries of one message by a quorum work queue before it is dead-lettered (RabbitMQ 4's
default, explicit here for 3.x, which has none). A handler's failures go through the retry
tiers, not redeliveries; this counts the deliveries a consumer took down with it (a crash,
a lost connection), which a node loss can cause a few times over for an innocent message."""


def _typed(
    arguments: Mapping[str, Any], queue_type: QueueType, *, delivery_limit: int | None = None
) -> Arguments:
    merged = dict(arguments)
    if queue_type is QueueType.QUORUM:
        merged["x-queue-type"] = "quorum"
        if "x-dead-letter-exchange" in merged:
            merged["x-dead-letter-strategy"] = "at-least-once"
            merged["x-overflow"] = "reject-publish"  # at-least-once is ignored without it
        if delivery_limit is not None:
            merged["x-delivery-limit"] = delivery_limit
    return tuple(sorted(merged.items()))


def work_queue(
    name: str,
    *,
    policy: RetryPolicy,
    queue_type: QueueType = QueueType.CLASSIC,
    bindings: Iterable[tuple[str, str]] = (),
    delivery_limit: int = DELIVERY_LIMIT,
    single_active: bool = False,
) -> Topology:
    """A durable work queue with its dead-letter queue and retry tiers.

    With ``single_active_consumer`` the broker delivers to one of the work queue's consumers
    at a time and hands over to another when that one goes (``x-single-active-consumer``):
    replicas of a service can all consume it while one works.

    The work queue dead-letters into ``Q.dlq``, so whatever the broker itself rejects
    (``basic.nack`` without requeue, an overflow) lands there too, never dropped.
    ``bindings`` are (exchange, routing key) pairs that feed the work queue;
    ``delivery_limit`` applies to quorum work and retry queues (see the module docstring).
    ``single_active``: one consumer at a time gets the work queue's messages, in queue order
    (``x-single-active-consumer``); the others stand by and one takes over when it goes.
    """
    if delivery_limit < 1:
        raise ValueError("delivery_limit must be at least 1")
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq_name(name),
    }
    if single_active:
        arguments["x-single-active-consumer"] = True
    main = Queue(name, arguments=_typed(arguments, queue_type, delivery_limit=delivery_limit))
    dead = Queue(dlq_name(name), arguments=_typed({}, queue_type))
    retries = [
        Queue(
            retry_queue_name(name, delay),
            arguments=_typed(
                {
                    "x-message-ttl": Int64(delay),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": name,
                },
                queue_type,
                delivery_limit=delivery_limit,
            ),
        )
        for delay in policy.tiers_ms()
    ]
    return Topology.of(
        queues=[main, dead, *retries],
        bindings=[Binding(exchange, name, key) for exchange, key in bindings],
    )


# AMQP allows these in exchange and queue names; anything else from a user is refused.
_AMQP_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


def check_name(value: str, what: str = "name", *, allow_empty: bool = False) -> str:
    """Return ``value`` if it is a valid AMQP exchange or queue name, else raise
    :class:`~rabbitry.errors.Invalid` (a ``ValueError``)."""
    if allow_empty and value == "":
        return value
    if not _AMQP_NAME.fullmatch(value) or value.startswith("amq."):
        raise Invalid(
            f"invalid {what} {value!r}: 1-255 letters, digits, '_', '-', '.' or ':'"
            " (not starting with 'amq.')"
        )
    return value


def check_routing_key(value: str) -> str:
    """Routing keys are short strings: at most 255 bytes, no control characters."""
    if len(value.encode()) > 255 or any(ord(ch) < 32 for ch in value):
        raise Invalid(f"invalid routing key {value[:40]!r}: at most 255 bytes, printable")
    return value
