"""Broker topology as data: frozen, hashable exchange, queue and binding specs.

Names of dead-letter and retry queues are computed from their work queue, never typed: for a
durable work queue ``Q`` there is ``Q.dlq`` and one ``Q.retry.<ms>`` per retry delay tier. A
retry queue holds messages for its TTL and then dead-letters them back to ``Q`` through the
default exchange, so a retry never spins in a hot requeue loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rabbitry.config import QueueType
from rabbitry.messaging.fieldtable import Int64
from rabbitry.messaging.retry import RetryPolicy

Arguments = tuple[tuple[str, Any], ...]


class ExchangeType(StrEnum):
    DIRECT = "direct"
    TOPIC = "topic"
    FANOUT = "fanout"
    HEADERS = "headers"


@dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    type: ExchangeType = ExchangeType.TOPIC
    durable: bool = True
    auto_delete: bool = False


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Arguments = ()

    def argument_map(self) -> dict[str, Any]:
        return dict(self.arguments)


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Topology:
    """A set of specs. ``a | b`` merges two topologies; declaring is idempotent."""

    exchanges: frozenset[Exchange] = field(default_factory=frozenset)
    queues: frozenset[Queue] = field(default_factory=frozenset)
    bindings: frozenset[Binding] = field(default_factory=frozenset)

    def __or__(self, other: Topology) -> Topology:
        return Topology(
            self.exchanges | other.exchanges,
            self.queues | other.queues,
            self.bindings | other.bindings,
        )

    @classmethod
    def of(
        cls,
        exchanges: Iterable[Exchange] = (),
        queues: Iterable[Queue] = (),
        bindings: Iterable[Binding] = (),
    ) -> Topology:
        return cls(frozenset(exchanges), frozenset(queues), frozenset(bindings))


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
