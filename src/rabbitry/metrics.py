"""Prometheus counters, labelled by queue; publishes by exchange (the queue for the default
exchange); the broker's alarms by connection.

Counters live in one registry per process; `/metrics` of every HTTP process exposes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

CounterChild = Counter
"""What ``COUNTER.labels(...)`` returns (prometheus_client types it as the counter itself)."""

PUBLISHED = Counter(
    "rabbitry_published", "Messages handed to the broker", ["target"], registry=REGISTRY
)
CONFIRMED = Counter(
    "rabbitry_confirmed", "Publishes the broker confirmed", ["target"], registry=REGISTRY
)
FAILED = Counter(
    "rabbitry_publish_failed",
    "Publishes the broker did not confirm (nack, unroutable, timeout, connection loss)",
    ["target"],
    registry=REGISTRY,
)
PERSISTED = Counter(
    "rabbitry_persisted", "Messages stored in the outbox instead", ["target"], registry=REGISTRY
)
CONSUMED = Counter("rabbitry_consumed", "Deliveries received", ["queue"], registry=REGISTRY)
ACKED = Counter("rabbitry_acked", "Deliveries acknowledged", ["queue"], registry=REGISTRY)
RETRIED = Counter(
    "rabbitry_retried", "Deliveries sent to a retry queue", ["queue"], registry=REGISTRY
)
DEAD_LETTERED = Counter(
    "rabbitry_dead_lettered",
    "Deliveries sent to the dead-letter queue",
    ["queue"],
    registry=REGISTRY,
)
RELAYED = Counter(
    "rabbitry_relayed", "Outbox rows the relay re-published to the broker", registry=REGISTRY
)
RELAY_FAILED = Counter(
    "rabbitry_relay_failed",
    "Outbox rows the relay tried to re-publish and the broker did not take",
    registry=REGISTRY,
)
# A batch subscription (the workflow worker's event queues) observes each batch call once.
HANDLER_SECONDS = Histogram(
    "rabbitry_handler_seconds",
    "Time spent in message handlers (one observation per call; a batch call is one)",
    ["queue"],
    registry=REGISTRY,
)
INVALID_TENANTS = Gauge(
    "rabbitry_invalid_tenants",
    "Tenant rows whose name no tenant may have (stored by an older version): served by no one",
    registry=REGISTRY,
)
BLOCKED = Gauge(
    "rabbitry_broker_blocked",
    "1 while the broker blocks this publishing connection (a memory or disk alarm)",
    ["connection"],
    registry=REGISTRY,
)


class GatewayGauges(Collector):
    """The chat gateways' open sockets and rooms, read when ``/metrics`` is scraped (the
    back-office's dashboard charts them). A gateway adds itself for its lifetime; one process
    may run several (tests do), so there is one collector and a gateway is a label."""

    def __init__(self) -> None:
        self._gateways: dict[str, tuple[Callable[[], int], Callable[[], int]]] = {}

    def add(self, instance: str, sockets: Callable[[], int], rooms: Callable[[], int]) -> None:
        self._gateways[instance] = (sockets, rooms)

    def discard(self, instance: str) -> None:
        self._gateways.pop(instance, None)

    def collect(self) -> Iterator[Metric]:
        sockets = GaugeMetricFamily(
            "rabbitry_chat_sockets", "Open WebSockets of a chat gateway", labels=["gateway"]
        )
        rooms = GaugeMetricFamily(
            "rabbitry_chat_rooms", "Rooms with a client on a chat gateway", labels=["gateway"]
        )
        for instance, (count_sockets, count_rooms) in list(self._gateways.items()):
            sockets.add_metric([instance], count_sockets())
            rooms.add_metric([instance], count_rooms())
        yield sockets
        yield rooms


GATEWAYS = GatewayGauges()
REGISTRY.register(GATEWAYS)
