"""The Prometheus counters move with what really happens on the broker."""

from __future__ import annotations

from rabbitry import metrics
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import Queue, Topology


def value(counter: str, label: str) -> float:
    sample = metrics.REGISTRY.get_sample_value(f"{counter}_total", {"target": label})
    return sample or 0.0


async def test_publish_counters_are_labelled_by_queue(
    settings: Settings, declarer: Declarer, namespace: str
) -> None:
    queue = f"{namespace}.counted"
    await declarer.declare(Topology.of(queues=[Queue(queue)]))
    missing = f"{namespace}.nowhere"
    async with Publisher(settings.amqp) as publisher:
        results = await publisher.publish_many(
            [(Message(type="t", payload=i), Route("", queue)) for i in range(3)]
        )
        failed = await publisher.publish(Message(type="t", payload=0), Route("", missing))
    assert all(r.ok for r in results)
    assert not failed.ok
    assert value("rabbitry_published", queue) == 3
    assert value("rabbitry_confirmed", queue) == 3
    assert value("rabbitry_publish_failed", queue) == 0
    assert value("rabbitry_published", missing) == 1
    assert value("rabbitry_publish_failed", missing) == 1
    assert await declarer.queue_size(queue) == 3
