"""``RABBITRY_QUEUE_TYPE=quorum`` on a real broker: the whole system's topology is declared as
quorum queues, and a message goes round a quorum retry tier and into a quorum dead-letter queue.

The broker comes from the ``amqp_url`` fixture: the single node today; the local cluster
(``scripts/cluster``) joins as a second parameter, and every test here runs on both.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aio_pika
import pytest
from pydantic import SecretStr

from helpers import AMQP_URL, Handled, eventually_true, listed
from rabbitry import (
    Declarer,
    Message,
    Publisher,
    QueueType,
    Reject,
    Route,
    Subscription,
    Topology,
    dlq_name,
    retry_queue_name,
    work_queue,
)
from rabbitry.app.registry import system_topology

if TYPE_CHECKING:
    from conftest import WorkerRunner
    from rabbitry.config import Settings


@pytest.fixture(params=["node"])
def amqp_url(request: pytest.FixtureRequest, broker: object) -> str:
    """The broker the quorum queues live on (``broker`` deletes the namespace afterwards)."""
    return AMQP_URL


@pytest.fixture
def quorum(settings: Settings, amqp_url: str) -> Settings:
    return settings.model_copy(
        update={"queue_type": QueueType.QUORUM, "amqp_url": SecretStr(amqp_url)}
    )


async def queue_types(namespace: str) -> dict[str, str]:
    """Name -> type ("quorum", "classic") of the namespace's queues, as the broker reports it."""
    rows = await asyncio.to_thread(listed, "queues", "name", "type")
    return {name: kind for name, kind in rows if name.startswith(f"{namespace}.")}


async def take(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every ready message of ``queue``, acked."""
    taken = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        while (got := await (await channel.get_queue(queue)).get(fail=False)) is not None:
            await got.ack()
            taken.append(got)
    return taken


def work(settings: Settings) -> tuple[str, Topology]:
    queue = f"{settings.namespace}.orders"
    return queue, work_queue(queue, policy=settings.retry, queue_type=settings.queue_type)


async def publish(settings: Settings, queue: str, message: Message) -> None:
    async with Publisher(settings.amqp) as publisher:
        assert (await publisher.publish(message, Route("", queue))).ok


async def test_the_whole_system_topology_is_declared_as_quorum_queues_and_again_idempotently(
    quorum: Settings, amqp_url: str
) -> None:
    topology = system_topology(quorum, tenants=["acme", "globex"])
    async with await Declarer.connect(amqp_url, name=f"{quorum.namespace}-test") as declarer:
        await declarer.declare(topology)
    async with await Declarer.connect(amqp_url, name=f"{quorum.namespace}-test") as declarer:
        await declarer.declare(topology)  # a second process declaring the same: no conflict

    types = await queue_types(quorum.namespace)
    assert set(types) == {q.name for q in topology.queues}
    assert set(types.values()) == {"quorum"}
    # Every part is in it: work queues, their dead-letter queues and retry tiers, tenants'.
    names = set(types)
    assert f"{quorum.namespace}.event-sourcing.p0" in names
    assert f"{quorum.namespace}.chat.history" in names
    assert f"{quorum.namespace}.tenant.acme.removals" in names
    assert dlq_name(f"{quorum.namespace}.event-sourcing.p0") in names
    assert retry_queue_name(f"{quorum.namespace}.event-sourcing.p0", 200) in names


async def test_a_failed_message_goes_round_a_quorum_retry_tier_and_is_handled_once(
    quorum: Settings, amqp_url: str, run_worker: WorkerRunner
) -> None:
    queue, topology = work(quorum)
    handled = Handled()

    async def flaky(message: Message) -> None:
        if message.attempt == 0:
            raise RuntimeError("the first try fails")
        await handled(message)

    sent = Message(type="order.placed", payload={"order": 7})
    async with run_worker([Subscription(queue, default=flaky)], topology, settings=quorum):
        assert set((await queue_types(quorum.namespace)).values()) == {"quorum"}
        await publish(quorum, queue, sent)
        await eventually_true(handled.include(sent.id), what="the retried message handled")

    assert [(m.id, m.attempt, m.payload) for m in handled] == [(sent.id, 1, {"order": 7})]
    assert await take(amqp_url, dlq_name(queue)) == []
    assert await take(amqp_url, retry_queue_name(queue, 200)) == []


async def test_a_message_that_always_fails_ends_in_the_quorum_dead_letter_queue_with_why(
    quorum: Settings, amqp_url: str, run_worker: WorkerRunner
) -> None:
    queue, topology = work(quorum)
    tries: list[int] = []

    async def broken(message: Message) -> None:
        tries.append(message.attempt)
        raise RuntimeError("the database is gone")

    async def refuse(message: Message) -> None:
        raise Reject("no such order")

    subscription = Subscription(queue, handlers={"order.placed": broken}, default=refuse)
    failing, refused = Message(type="order.placed", payload=1), Message(type="other", payload=2)
    dead: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def both_dead() -> bool:
        dead.extend(await take(amqp_url, dlq_name(queue)))
        return len(dead) >= 2

    async with run_worker([subscription], topology, settings=quorum):
        await publish(quorum, queue, failing)
        await publish(quorum, queue, refused)
        await eventually_true(both_dead, what="both messages in the dead-letter queue")

    assert tries == [0, 1, 2]  # max_attempts=3, then dead-lettered
    by_id = {m.message_id: m.headers for m in dead}
    assert set(by_id) == {failing.id, refused.id}
    assert by_id[failing.id]["x-rabbitry-reason"] == "the database is gone"
    assert by_id[refused.id]["x-rabbitry-reason"] == "no such order"
    assert (await queue_types(quorum.namespace))[dlq_name(queue)] == "quorum"
