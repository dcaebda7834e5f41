"""The broker objects of the events part (SPEC "Broker topology"), named under the namespace.

``<ns>.modules`` is a topic exchange with one queue per module, bound with the routing keys the
module declares; the workflow module's queue hears ``#``. ``<ns>.events`` feeds the
event-sourcing queues: ``<ns>.event-sourcing.p0`` … ``p<K-1>`` (``events_partitions``, 1 by
default), each with a single active consumer, so that each entity's events reach the store in
the order they were published, however many workflow workers run.

Partitions: a publisher that knows the events are partitioned puts a bucket of the entity in
the routing key (``update.b17``, :func:`routing_key`); bucket ``b`` is bound to partition
``b % K``. A bucket is a hash of the entity and its id, the same in every process and
language, and there are :data:`BUCKETS` of them, so publishers need not know K. A key without
a bucket (a publisher that does not partition, PHP's included) goes to partition 0; with one
partition the queue hears ``#``.

``<ns>.event-sourcing``, the one queue of earlier versions (no single active consumer), is the
legacy queue: a workflow worker drains it before it consumes the partitions
(:mod:`rabbitry.events.legacy`). Every name is derived here from the namespace and validated
identifiers, so no caller formats a queue name out of user input.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from rabbitry.config import ModuleConfig, Settings
from rabbitry.messaging.settings import validate_name
from rabbitry.messaging.topology import Exchange, ExchangeType, Topology, work_queue

WORKFLOW_MODULE = "workflow"
BUCKETS = 64
"""Buckets of entities in routing keys: the most partitions a deployment can have."""


@dataclass(frozen=True, slots=True)
class EventsLayout:
    """Names of the module and event-sourcing exchanges and queues of one deployment."""

    namespace: str

    def __post_init__(self) -> None:
        validate_name(self.namespace, "namespace")

    @property
    def modules_exchange(self) -> str:
        return f"{self.namespace}.modules"

    def module_queue(self, module: str) -> str:
        return f"{self.namespace}.module.{validate_name(module, 'module name')}"

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    def partition_queue(self, partition: int) -> str:
        """The event-sourcing queue of one partition (0-based)."""
        if not 0 <= partition < BUCKETS:
            raise ValueError(f"a partition is between 0 and {BUCKETS - 1}")
        return f"{self.namespace}.event-sourcing.p{partition}"

    @property
    def event_sourcing_queue(self) -> str:
        """The first (with one partition, the only) event-sourcing queue."""
        return self.partition_queue(0)

    @property
    def legacy_queue(self) -> str:
        """The single event-sourcing queue of earlier versions, drained and then deleted."""
        return f"{self.namespace}.event-sourcing"


def bucket(entity: str, entity_id: int) -> int:
    """The bucket of an entity: CRC-32 of ``"<entity>#<id>"`` (UTF-8) modulo :data:`BUCKETS`,
    which any language computes alike (PHP: ``crc32("$entity#$id") % 64``)."""
    return zlib.crc32(f"{entity}#{entity_id}".encode()) % BUCKETS


def routing_key(change_type: str, entity: str, entity_id: int, *, partitioned: bool) -> str:
    """The routing key of a change event on ``<ns>.events``: its type, and when the events are
    partitioned the entity's bucket (``update.b17``)."""
    if not partitioned:
        return change_type
    return f"{change_type}.b{bucket(entity, entity_id)}"


def partition_keys(partition: int, partitions: int) -> list[str]:
    """The binding keys of one partition's queue on ``<ns>.events``."""
    if partitions == 1:
        return ["#"]
    keys = [f"*.b{b}" for b in range(partition, BUCKETS, partitions)]
    # Keys without a bucket (publishers that do not partition) go to the first partition.
    return ["*", *keys] if partition == 0 else keys


ALL_KEYS = ("#", "*", *(f"*.b{b}" for b in range(BUCKETS)))
"""Every key any number of partitions binds a partition queue with."""


def stale_keys(partition: int, partitions: int) -> list[str]:
    """The keys another number of partitions may have bound ``partition``'s queue with, which
    this one does not: left there, each would route copies of other partitions' events to it
    (a declaration adds bindings; it never removes one)."""
    wanted = set(partition_keys(partition, partitions))
    return [key for key in ALL_KEYS if key not in wanted]


def module_topology(settings: Settings, modules: Iterable[ModuleConfig]) -> Topology:
    """``<ns>.modules`` and a queue per module; the workflow module hears ``#``."""
    layout = EventsLayout(settings.namespace)
    exchange = layout.modules_exchange
    result = Topology.of(exchanges=[Exchange(exchange, ExchangeType.TOPIC)])
    declared = {m.name: m for m in modules}
    declared.setdefault(WORKFLOW_MODULE, ModuleConfig(name=WORKFLOW_MODULE, routing_keys=["#"]))
    for module in declared.values():
        keys = ["#"] if module.name == WORKFLOW_MODULE else module.routing_keys
        result |= work_queue(
            layout.module_queue(module.name),
            policy=settings.retry,
            queue_type=settings.queue_type,
            bindings=[(exchange, key) for key in keys],
        )
    return result


def events_topology(settings: Settings) -> Topology:
    """``<ns>.events`` and the event-sourcing queues it feeds, one per partition."""
    result = Topology()
    for partition in range(settings.events_partitions):
        result |= partition_topology(settings, partition)
    return result


def partition_topology(settings: Settings, partition: int) -> Topology:
    """``<ns>.events`` and one partition's queue (with its retry and dead-letter queues): what
    the worker consuming that partition alone declares."""
    layout = EventsLayout(settings.namespace)
    exchange = Exchange(layout.events_exchange, ExchangeType.TOPIC)
    partitions = settings.events_partitions
    return Topology.of(exchanges=[exchange]) | work_queue(
        layout.partition_queue(partition),
        policy=settings.retry,
        queue_type=settings.queue_type,
        bindings=[(exchange.name, key) for key in partition_keys(partition, partitions)],
        single_active=True,
    )


def topology(settings: Settings) -> Topology:
    """Everything the events part declares: the modules and the event-sourcing queue."""
    return module_topology(settings, settings.modules) | events_topology(settings)
