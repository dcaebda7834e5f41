"""The Worker's subscriptions at run time: queues added and removed while it runs, all on one
connection; a queue deleted under it is declared and consumed again without touching the
connection; after the broker drops the connection every subscription is consumed again."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from helpers import Eventually, Handled, publish, work
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.errors import ConfigError
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import Queue, Topology
from rabbitry.messaging.worker import Worker

if TYPE_CHECKING:
    from conftest import BrokerProbe, WorkerRunner


def queues(settings: Settings, count: int, prefix: str = "q") -> list[tuple[str, Topology]]:
    return [work(settings, f"{prefix}{n}") for n in range(count)]


async def test_queues_subscribed_while_running_are_consumed_over_the_one_connection(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    first, first_topology = work(settings, "first")
    handled = Handled()
    added = queues(settings, 30)
    async with run_worker([Subscription(first, default=handled)], first_topology) as worker:
        for queue, topology in added:
            await worker.subscribe([Subscription(queue, default=handled)], topology)
            assert worker.consuming(queue)

        messages = {queue: Message(type="t", payload=queue) for queue, _ in added}
        for queue, message in messages.items():
            await publish(settings, queue, message)
        await eventually(handled.include(*(m.id for m in messages.values())), what="all")

        # One consumer connection for the 31 queues (the declarer's come and go).
        names = [name for name, _ in await broker.connections(worker.name)]
        assert [n for n in names if not n.endswith("-declarer")] == [worker.name]


async def test_an_unsubscribed_queue_keeps_its_messages_and_the_others_go_on(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    (kept, kept_topology), (dropped, dropped_topology) = queues(settings, 2)
    handled = Handled()
    async with run_worker([], Topology()) as worker:
        await worker.subscribe([Subscription(kept, default=handled)], kept_topology)
        await worker.subscribe([Subscription(dropped, default=handled)], dropped_topology)
        await worker.unsubscribe(dropped)
        assert not worker.subscribed(dropped)

        waiting, served = Message(type="t", payload=1), Message(type="t", payload=2)
        await publish(settings, dropped, waiting)
        await publish(settings, kept, served)
        await eventually(handled.include(served.id), what="the kept queue's message")

        assert await broker.counts(dropped) == (1, 0)
    assert waiting.id not in {m.id for m in handled}


async def test_a_queue_deleted_under_the_worker_is_consumed_again_on_the_same_connection(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    (deleted, deleted_topology), (other, other_topology) = queues(settings, 2)
    handled = Handled()
    async with run_worker([], Topology()) as worker:
        await worker.subscribe([Subscription(deleted, default=handled)], deleted_topology)
        await worker.subscribe([Subscription(other, default=handled)], other_topology)
        before = await broker.connections(worker.name)

        await declarer.delete(deleted_topology)
        message = Message(type="t", payload={})

        async def delivered() -> bool:
            async with Publisher(settings.amqp) as publisher:
                result = await publisher.publish(message, Route("", deleted))
            return result.status is PublishStatus.PUBLISHED

        await eventually(delivered, what="the queue to be declared again")
        await eventually(handled.include(message.id), what="the message")
        still = Message(type="t", payload="other")
        await publish(settings, other, still)
        await eventually(handled.include(still.id), what="the other queue's message")

        # basic.cancel reached that consumer alone: the connection is the one from before.
        after = await broker.connections(worker.name)
        consumer_links = [c for c in after if c[0] == worker.name]
        assert consumer_links == [c for c in before if c[0] == worker.name]


async def test_after_the_broker_drops_the_connection_every_subscription_is_consumed_again(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    handled = Handled()
    added = queues(settings, 10)
    async with run_worker([], Topology()) as worker:
        for queue, topology in added:
            await worker.subscribe([Subscription(queue, default=handled)], topology)

        assert await broker.close_connections(worker.name) >= 1
        messages = [Message(type="t", payload=queue) for queue, _ in added]
        for (queue, _), message in zip(added, messages, strict=True):
            await publish(settings, queue, message)
        await eventually(handled.include(*(m.id for m in messages)), what="every queue")
        assert worker.connected.is_set()


async def test_a_queue_deleted_while_disconnected_is_declared_by_the_next_connection(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # A reconnect consumes without declaring; the consume of a missing queue fails that
    # connection, and the one after it declares everything.
    (gone, gone_topology), (kept, kept_topology) = queues(settings, 2)
    handled = Handled()
    async with run_worker([], Topology()) as worker:
        await worker.subscribe([Subscription(gone, default=handled)], gone_topology)
        await worker.subscribe([Subscription(kept, default=handled)], kept_topology)
        await declarer.delete(gone_topology)
        await broker.close_connections(worker.name)
        message = Message(type="t", payload={})

        async def delivered() -> bool:
            async with Publisher(settings.amqp) as publisher:
                result = await publisher.publish(message, Route("", gone))
            return result.status is PublishStatus.PUBLISHED

        await eventually(delivered, timeout=30, what="the deleted queue declared again")
        await eventually(handled.include(message.id), what="its message")


async def test_a_subscription_whose_queue_the_broker_refuses_is_not_added(
    settings: Settings,
    declarer: Declarer,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    (clash, clash_topology), (fine, fine_topology) = queues(settings, 2)
    await declarer.declare(Topology.of(queues=[Queue(clash, arguments=(("x-max-length", 5),))]))
    handled = Handled()
    async with run_worker([], Topology()) as worker:
        with pytest.raises(ConfigError):
            await worker.subscribe([Subscription(clash, default=handled)], clash_topology)
        assert not worker.subscribed(clash)
        await worker.subscribe([Subscription(fine, default=handled)], fine_topology)
        message = Message(type="t", payload={})
        await publish(settings, fine, message)
        await eventually(handled.include(message.id), what="the other queue's message")


async def test_a_queue_cannot_be_subscribed_twice(
    settings: Settings, declarer: Declarer, run_worker: WorkerRunner
) -> None:
    queue, topology = work(settings)
    async with run_worker([Subscription(queue, default=Handled())], topology) as worker:
        with pytest.raises(ValueError, match="subscribed already"):
            await worker.subscribe([Subscription(queue, default=Handled())], topology)


async def test_subscriptions_made_before_it_runs_are_declared_in_one_round_minus_a_refused_one(
    settings: Settings,
    declarer: Declarer,
    eventually: Eventually,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # DISPATCH's start: thousands of tenants subscribed before the worker connects, declared
    # pipelined in one round. A queue the broker has with other arguments is dropped, naming
    # it; the groups declared after it in the same window are declared and consumed.
    added = queues(settings, 12)
    clash = added[6][0]
    await declarer.declare(Topology.of(queues=[Queue(clash, arguments=(("x-max-length", 5),))]))
    handled = Handled()
    worker = Worker(f"{settings.namespace}-worker", [], Topology(), amqp=settings.amqp)
    for queue, topology in added:
        await worker.subscribe([Subscription(queue, default=handled)], topology)
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    try:
        await asyncio.wait_for(worker.connected.wait(), 20)
        assert not worker.subscribed(clash)
        assert f"dropping {clash}" in caplog.text
        assert f"queue {clash}: 406" in caplog.text
        messages = {queue: Message(type="t", payload=queue) for queue, _ in added}
        del messages[clash]
        for queue, message in messages.items():
            await publish(settings, queue, message)
        await eventually(handled.include(*(m.id for m in messages.values())), what="the rest")
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
