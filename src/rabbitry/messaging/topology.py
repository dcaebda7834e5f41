"""Broker topology as data: frozen, hashable exchange, queue and binding specs.

Names of dead-letter and retry queues are computed from their work queue, never typed: for a
durable work queue ``Q`` there is ``Q.dlq`` and one ``Q.retry.<ms>`` per retry delay tier. A
retry queue holds messages for its TTL and then dead-letters them back to ``Q`` through the
default exchange, so a retry never spins in a hot requeue loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.spec import Arguments, Binding, Exchange, ExchangeType, Queue, Topology
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settings import QueueType

__all__ = [
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
    return f"{queue}.dlq"


def retry_queue_name(queue: str, delay_ms: int) -> str:
    return f"{queue}.retry.{delay_ms}"


def _typed(arguments: Mapping[str, Any], queue_type: QueueType) -> Arguments:
    merged = dict(arguments)
    if queue_type is QueueType.QUORUM:
        merged["x-queue-type"] = "quorum"
    return tuple(sorted(merged.items()))


def work_queue(
    name: str,
    *,
    policy: RetryPolicy,
    queue_type: QueueType = QueueType.CLASSIC,
    bindings: Iterable[tuple[str, str]] = (),
) -> Topology:
    """A durable work queue with its dead-letter queue and retry tiers.

    The work queue dead-letters into ``Q.dlq``, so whatever the broker itself rejects
    (``basic.nack`` without requeue, an overflow) lands there too, never dropped.
    ``bindings`` are (exchange, routing key) pairs that feed the work queue.
    """
    main = Queue(
        name,
        arguments=_typed(
            {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq_name(name)},
            queue_type,
        ),
    )
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
    """Return ``value`` if it is a valid AMQP exchange or queue name, else raise ``ValueError``."""
    if allow_empty and value == "":
        return value
    if not _AMQP_NAME.fullmatch(value) or value.startswith("amq."):
        raise ValueError(
            f"invalid {what} {value!r}: 1-255 letters, digits, '_', '-', '.' or ':'"
            " (not starting with 'amq.')"
        )
    return value


def check_routing_key(value: str) -> str:
    """Routing keys are short strings: at most 255 bytes, no control characters."""
    if len(value.encode()) > 255 or any(ord(ch) < 32 for ch in value):
        raise ValueError(f"invalid routing key {value[:40]!r}: at most 255 bytes, printable")
    return value
