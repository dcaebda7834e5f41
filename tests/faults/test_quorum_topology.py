"""Quorum queues on the cluster: the system's topology as quorum queues with at-least-once
dead-lettering and a delivery limit, retries through the quorum retry tiers, dead letters with
their reason, a worker that moves to a surviving node, and a type mismatch as a fatal error."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import pytest

from faults.conftest import CLUSTER_URL, Cluster, node_url
from helpers import at_least, publish_json
from rabbitry.amqp.declarer import Declarer
from rabbitry.app.registry import system_topology
from rabbitry.config import Settings
from rabbitry.errors import ConfigError
from rabbitry.messaging.consumer import Reject, Retry, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.settings import QueueType
from rabbitry.messaging.topology import DELIVERY_LIMIT, Queue, Topology, work_queue
from rabbitry.messaging.worker import Worker

if TYPE_CHECKING:
    from conftest import Eventually, WorkerRunner


async def test_the_system_topology_is_declared_as_quorum_queues_that_dead_letter_at_least_once(
    faults: Cluster, cluster_settings: Settings
) -> None:
    async with await Declarer.connect(CLUSTER_URL, name=f"{cluster_settings.namespace}-t") as d:
        await d.declare(system_topology(cluster_settings))
    out = await faults.ctl(1, "list_queues", "--no-table-headers", "name", "type", "arguments")
    rows = {
        name: (kind, arguments)
        for name, kind, arguments in (line.split("\t") for line in out.splitlines())
        if name.startswith(cluster_settings.namespace)
    }
    assert rows and all(kind == "quorum" for kind, _ in rows.values())
    work = [name for name in rows if not name.endswith(".dlq") and ".retry." not in name]
    retries = [name for name in rows if ".retry." in name]
    assert work and retries
    for name in work + retries:
        arguments = rows[name][1]
        assert '{"x-dead-letter-strategy","at-least-once"}' in arguments, name
        assert '{"x-overflow","reject-publish"}' in arguments, name
        assert f'{{"x-delivery-limit",{DELIVERY_LIMIT}}}' in arguments, name
    for name in (n for n in rows if n.endswith(".dlq")):
        assert "x-delivery-limit" not in rows[name][1], name


async def test_retries_and_dead_letters_go_through_quorum_queues_on_the_cluster(
    faults: Cluster,
    cluster_settings: Settings,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue = f"{cluster_settings.namespace}.work"
    topology = work_queue(queue, policy=cluster_settings.retry, queue_type=QueueType.QUORUM)
    attempts: list[str] = []

    async def handle(message: Message) -> None:
        attempts.append(message.payload)
        if message.payload == "retry" and attempts.count("retry") < 3:
            raise Retry()
        if message.payload == "reject":
            raise Reject("not for us")

    subscription = Subscription(queue, handlers={"t": handle})
    async with run_worker([subscription], topology, settings=cluster_settings):
        await publish_json(cluster_settings, queue, "retry", "reject", "fine")
        await eventually(at_least(attempts, 5), timeout=30, what="three tries and two others")
    assert sorted(attempts) == ["fine", "reject", "retry", "retry", "retry"]
    dead = await faults.read_headers(f"{queue}.dlq")
    assert [(json.loads(body), headers["x-rabbitry-reason"]) for body, headers in dead] == [
        ("reject", "not for us")
    ]


async def test_a_worker_whose_node_crashes_consumes_on_a_surviving_one(
    faults: Cluster,
    cluster_settings: Settings,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue = f"{cluster_settings.namespace}.work"
    topology = work_queue(queue, policy=cluster_settings.retry, queue_type=QueueType.QUORUM)
    handled: list[int] = []

    async def handle(message: Message) -> None:
        handled.append(message.payload)

    subscription = Subscription(queue, handlers={"t": handle})
    name = f"{cluster_settings.namespace}-worker"
    async with run_worker([subscription], topology, settings=cluster_settings, name=name):
        await publish_json(cluster_settings, queue, *range(50))
        await eventually(at_least(handled, 50), timeout=30, what="the first 50")
        consuming = await faults.connections(name, exact=True)  # the worker's one connection
        assert len(consuming) == 1
        await faults.kill(consuming[0][1])

        async def published() -> bool:
            # Nacked while the queue elects a new leader (its old one may have died).
            try:
                await publish_json(cluster_settings, queue, *range(50, 100))
            except AssertionError:
                return False
            return True

        await eventually(published, timeout=60, what="the queue taking publishes again")

        async def all_hundred() -> bool:
            return len(set(handled)) == 100  # a redelivery may repeat one

        await eventually(all_hundred, timeout=90, what="the next 50")
        (after,) = await faults.connections(name, exact=True)
        assert after[1] != consuming[0][1]
    assert set(handled) == set(range(100))


async def test_a_queue_declared_with_another_type_is_a_fatal_configuration_error(
    faults: Cluster, cluster_settings: Settings
) -> None:
    queue = f"{cluster_settings.namespace}.work"
    async with await Declarer.connect(node_url(2), name=f"{cluster_settings.namespace}-t") as d:
        await d.declare(Topology.of(queues=[Queue(queue)]))  # classic, as before a migration
    topology = work_queue(queue, policy=cluster_settings.retry, queue_type=QueueType.QUORUM)
    worker = Worker(
        f"{cluster_settings.namespace}-worker",
        [Subscription(queue, handlers={})],
        topology,
        amqp=cluster_settings.amqp,
        retry=cluster_settings.retry,
    )
    # Not retried as "broker unavailable": the worker stops with the reason and the remedy.
    with pytest.raises(ConfigError) as raised:
        await asyncio.wait_for(worker.run(asyncio.Event()), timeout=30)
    assert f"inequivalent arg 'x-dead-letter-exchange' for queue '{queue}'" in str(raised.value)
    assert "RABBITRY_QUEUE_TYPE" in str(raised.value)
