"""Broker alarms on the real broker: ``connection.blocked`` while memory is "low".

The tests raise a memory alarm by lowering ``vm_memory_high_watermark`` for a few seconds and
always restore the value they found, in a ``finally``: other people's tests share the broker,
and every publisher on it waits while the alarm lasts, so each alarm is kept as short as the
test allows. RabbitMQ blocks a connection when it publishes during an alarm, then reads
nothing more from it, acks included, until the alarm clears.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx

from helpers import RecordingFallback, listed, publish_json, rabbitmqctl
from rabbitry import metrics
from rabbitry.amqp.declarer import Declarer
from rabbitry.app.http import create_app
from rabbitry.config import Settings
from rabbitry.messaging.consumer import Retry, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import Queue, Topology, work_queue
from rabbitry.storage import open_database
from rabbitry.web import AppState

if TYPE_CHECKING:
    from conftest import BrokerProbe, Eventually, WorkerRunner

_WATERMARK = "vm_memory_monitor:get_vm_memory_high_watermark()."


@asynccontextmanager
async def memory_alarm() -> AsyncIterator[None]:
    """A memory alarm on the shared broker for as long as the block lasts, then the watermark
    it had before (a fraction such as ``0.4``, or ``{absolute,Bytes}``)."""
    previous = (await asyncio.to_thread(rabbitmqctl, "eval", _WATERMARK)).strip()
    try:
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", "0.0000001")
        yield
    finally:
        restore: tuple[str, ...]
        if previous.startswith("{absolute,"):
            restore = ("absolute", previous.removeprefix("{absolute,").rstrip("}"))
        else:
            restore = (previous,)
        await asyncio.to_thread(rabbitmqctl, "set_vm_memory_high_watermark", *restore)


def blocked_gauge(connection: str) -> float:
    value = metrics.REGISTRY.get_sample_value("rabbitry_broker_blocked", {"connection": connection})
    return value or 0.0


async def test_a_publish_while_the_broker_is_blocked_goes_to_the_outbox_at_once(
    settings: Settings, declarer: Declarer, broker: BrokerProbe, eventually: Eventually
) -> None:
    queue = f"{settings.namespace}.inbox"
    await declarer.declare(Topology.of(queues=[Queue(queue)]))
    # A timeout this long would be obvious: the test would take it, and the reason say so.
    patient = settings.model_copy(update={"publish_timeout": 60.0})
    outbox = RecordingFallback()
    name = f"{settings.namespace}-app"
    app = create_app(patient)
    async with (
        open_database(patient.sql_url) as database,
        Publisher(patient.amqp, fallback=outbox, name=name) as publisher,
    ):
        state = AppState.of(app)  # what the lifespan sets, with the recording fallback
        state.database, state.publisher = database, publisher
        health = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        assert (await publisher.publish(Message(type="t", payload=0), Route("", queue))).ok
        async with memory_alarm():
            # The first publish of the alarm is what makes the broker block the connection;
            # it fails over to the outbox after a short grace, not the publish timeout or the
            # end of the alarm.
            first = asyncio.ensure_future(
                publisher.publish(Message(type="t", payload=1), Route("", queue))
            )
            await eventually(_true(lambda: publisher.blocked is not None), what="the block")
            second = await publisher.publish(Message(type="t", payload=2), Route("", queue))
            while_blocked = (await health.get("/healthz")).json()
            gauge = blocked_gauge(f"{name}-publisher")
            await eventually(_true(first.done), what="the first publish failing over")
        await eventually(_true(lambda: publisher.blocked is None), what="the unblock")
        third = await publisher.publish(Message(type="t", payload=3), Route("", queue))
        assert (await first).status is PublishStatus.PERSISTED
        after = (await health.get("/healthz")).json()
        await health.aclose()
    assert second.status is PublishStatus.PERSISTED
    assert second.error is not None
    assert "blocked by the broker (memory/disk alarm): low on memory" in second.error
    assert sorted(m.payload for _, m, _ in outbox.items) == [1, 2]
    assert gauge == 1.0 and blocked_gauge(f"{name}-publisher") == 0.0
    assert while_blocked["status"] == "ok"  # the outbox takes messages meanwhile
    assert "memory/disk alarm" in while_blocked["broker_blocked"]
    assert after["broker_blocked"] is None
    assert third.status is PublishStatus.PUBLISHED
    # The broker may have read the first publish before it stopped reading: then it arrives
    # too, with the id the outbox holds (at least once; consumers dedupe by id).
    assert sorted(json.loads(r.body) for r in await broker.get_all(queue)) in ([0, 3], [0, 1, 3])


async def test_consumers_keep_acking_while_an_alarm_blocks_their_retry_copies(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    patient = settings.model_copy(update={"publish_timeout": 30.0, "prefetch": 10})
    queue = f"{patient.namespace}.work"
    topology = work_queue(queue, policy=patient.retry)
    await declarer.declare(topology)
    alarm_on, blocking = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handle(message: Message) -> None:
        if message.payload == "retry" and not blocking.is_set():
            await alarm_on.wait()
            raise Retry()  # its copy is published now, and the broker blocks who sent it
        await blocking.wait()  # the others' acks leave once the broker blocks that connection
        handled.append(message.payload)

    payloads = ["retry", *(f"ok{n}" for n in range(5))]
    await publish_json(patient, queue, *payloads)  # before the alarm: publishers wait during it
    subscription = Subscription(queue, handlers={"t": handle})
    async with run_worker([subscription], topology, settings=patient):
        await eventually(_counts_are(broker, queue, (0, 6)), what="all six delivered")
        async with memory_alarm():
            alarm_on.set()
            worker = f"{patient.namespace}-worker"
            await eventually(_blocks(worker), timeout=20, what="a connection of the worker blocked")
            blocking.set()
            # The acks of ok0..ok4 reach the broker while the retry copy waits for the alarm
            # to clear: only the delivery whose copy is pending stays unacked.
            await eventually(
                _counts_are(broker, queue, (0, 1)), timeout=20, what="the acks, during the alarm"
            )
            during_alarm = sorted(handled)
        # Once it clears, the copy is confirmed, the original acked, and the retry handled.
        await eventually(_true(lambda: "retry" in handled), timeout=30, what="the retry")
    assert during_alarm == [f"ok{n}" for n in range(5)]
    assert await broker.counts(queue) == (0, 0)


def _true(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


def _blocks(name_part: str) -> Callable[[], Awaitable[bool]]:
    """Whether the broker blocks a connection whose name contains ``name_part``."""

    async def check() -> bool:
        rows = await asyncio.to_thread(listed, "connections", "state", "client_properties")
        return any(row[0] == "blocked" and name_part in row[1] for row in rows if len(row) > 1)

    return check


def _counts_are(
    broker: BrokerProbe, queue: str, expected: tuple[int, int]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await broker.counts(queue) == expected

    return check
