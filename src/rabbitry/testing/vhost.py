"""The in-memory broker's objects: exchanges, queues and bindings, and how a message is routed
and dead-lettered between them. No connections here (see :mod:`rabbitry.testing.broker`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rabbitry.errors import BrokerError, ConfigError, NotFound
from rabbitry.messaging.topology import Binding, Exchange, ExchangeType, Queue, Topology
from rabbitry.testing.queues import MemoryQueue, QueuedMessage, dead_lettered
from rabbitry.testing.routing import binding_matches

_PREDECLARED = [
    Exchange("amq.direct", ExchangeType.DIRECT),
    Exchange("amq.fanout", ExchangeType.FANOUT),
    Exchange("amq.topic", ExchangeType.TOPIC),
]


class VirtualHost:
    """Exchanges, queues and bindings of one virtual host, on a virtual clock."""

    def __init__(self) -> None:
        self._exchanges: dict[str, Exchange] = {e.name: e for e in _PREDECLARED}
        self._queues: dict[str, MemoryQueue] = {}
        self._bindings: set[Binding] = set()
        self._now = 0.0
        self._epoch = dt.datetime.now(dt.UTC)

    @property
    def time(self) -> float:
        """Virtual seconds since the broker was made; only ``advance``/``drain`` move it."""
        return self._now

    # --- declaring ------------------------------------------------------------------------

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, then queues, then bindings; idempotent, as on RabbitMQ: declaring
        an existing name with other properties fails (``PRECONDITION_FAILED``)."""
        for exchange in sorted(topology.exchanges, key=lambda e: e.name):
            if exchange.type is ExchangeType.HEADERS:
                raise ValueError("the in-memory broker does not route headers exchanges")
            if self._exchanges.setdefault(exchange.name, exchange) != exchange:
                # A ConfigError, as Declarer raises it: the deployment disagrees with the broker.
                raise ConfigError(f"declare exchange {exchange.name}: PRECONDITION_FAILED")
        for queue in sorted(topology.queues, key=lambda q: q.name):
            held = self._queues.setdefault(queue.name, MemoryQueue(queue))
            if _shape(held.spec) != _shape(queue):
                raise ConfigError(f"declare queue {queue.name}: PRECONDITION_FAILED")
        for binding in sorted(topology.bindings, key=_binding_key):
            self.bind(binding)

    def bind(self, binding: Binding) -> None:
        if binding.exchange == "":
            raise BrokerError("bind: ACCESS_REFUSED - the default exchange takes no bindings")
        if binding.exchange not in self._exchanges:
            raise NotFound(f"bind: no exchange {binding.exchange!r}")
        if binding.queue not in self._queues:
            raise NotFound(f"bind: no queue {binding.queue!r}")
        self._bindings.add(binding)

    def unbind(self, binding: Binding) -> None:
        self._bindings.discard(binding)

    def delete(self, topology: Topology) -> None:
        """Delete bindings, queues (with their messages) and exchanges."""
        gone = {q.name for q in topology.queues} | {e.name for e in topology.exchanges}
        self._bindings = {
            b
            for b in self._bindings - topology.bindings
            if b.queue not in gone and b.exchange not in gone
        }
        for queue in topology.queues:
            if (held := self._queues.pop(queue.name, None)) is not None:
                self._queue_deleted(held)
        for exchange in topology.exchanges:
            self._exchanges.pop(exchange.name, None)

    def _queue_deleted(self, queue: MemoryQueue) -> None:
        """Hook: the consumers of ``queue`` lose it."""

    def purge(self, queue: str) -> int:
        """Drop the ready messages of ``queue``; return how many."""
        held = self._held(queue)
        count = len(held.ready)
        held.ready.clear()
        return count

    # --- looking inside -------------------------------------------------------------------

    def peek(self, queue: str) -> list[QueuedMessage]:
        """The ready messages of ``queue``, oldest first, left in place."""
        return [held.message for held in self._held(queue).ready]

    def get_all(self, queue: str) -> list[QueuedMessage]:
        """Take every ready message off ``queue`` (as ``basic.get`` with auto-ack)."""
        held = self._held(queue)
        taken = [h.message for h in held.ready]
        held.ready.clear()
        return taken

    def _held(self, name: str) -> MemoryQueue:
        if (queue := self._queues.get(name)) is None:
            raise NotFound(f"no queue {name!r}")
        return queue

    # --- routing --------------------------------------------------------------------------

    def _route(self, exchange: str, routing_key: str) -> list[MemoryQueue]:
        """The queues a message sent to ``exchange`` with ``routing_key`` lands in."""
        if exchange == "":
            queue = self._queues.get(routing_key)
            return [] if queue is None else [queue]
        if (declared := self._exchanges.get(exchange)) is None:
            return []
        names = {
            b.queue
            for b in self._bindings
            if b.exchange == exchange and binding_matches(declared.type, b.routing_key, routing_key)
        }
        return [self._queues[name] for name in sorted(names)]

    def _dead_letter(self, queue: MemoryQueue, message: QueuedMessage, reason: str) -> None:
        """What RabbitMQ does with a message that expired in, or was rejected by, ``queue``."""
        target = queue.dead_letter_target(message)
        if target is None:
            return  # no dead-letter exchange: RabbitMQ drops it
        exchange, key = target
        when = self._epoch + dt.timedelta(seconds=self._now)
        copy = QueuedMessage(
            exchange, key, message.body, dead_lettered(message, queue.name, reason, when)
        )
        for destination in self._route(exchange, key):
            destination.put(copy, self._now)

    def _expire(self, until: float) -> bool:
        """Move the clock to the next expiry at or before ``until`` and dead-letter what
        expires then; False if none is due by then."""
        expiries = [d for q in self._queues.values() if (d := q.next_expiry()) is not None]
        due = min(expiries, default=None)
        if due is None or due > until:
            return False
        self._now = max(self._now, due)
        for queue in list(self._queues.values()):
            for message in queue.expired(self._now):
                self._dead_letter(queue, message, "expired")
        return True


def _shape(queue: Queue) -> tuple[bool, bool, bool, dict[str, Any]]:
    return queue.durable, queue.exclusive, queue.auto_delete, queue.argument_map()


def _binding_key(binding: Binding) -> tuple[str, str, str]:
    return binding.exchange, binding.queue, binding.routing_key
