"""The publisher and its outbox on a three-node cluster: a stream of publishes through a node
crash, a whole-cluster restart, connections closed by the broker and a memory alarm.

Each case counts: every message sent is confirmed by the broker or stored in the outbox (the
call's outcome), and once the outbox is relayed the queue holds every one of them, 0 lost.
A message can arrive twice (in flight when the fault struck: stored and, unknown to us, also
routed); duplicates are counted, and carry the same message id for consumers to dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from faults.conftest import CLUSTER_URL, Cluster, Figures
from faults.tally import Tally, count, migrated_database, relay_outbox
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import work_queue
from rabbitry.outbox.store import Outbox

if TYPE_CHECKING:
    from conftest import Eventually

# Confirmed publishes before the fault, and after it (proof the publisher is back on a node).
BEFORE = 300
AFTER = 300


@dataclass
class Stream:
    """Publishes until stopped, a few calls at a time, and tallies each call's outcome."""

    publisher: Publisher
    route: Route
    tally: Tally = field(default_factory=Tally)

    async def _publish(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            message = Message(type="fault.test", payload={"n": len(self.tally.sent)})
            self.tally.sent.append(message.id)
            self.tally.record(message.id, await self.publisher.publish(message, self.route))

    @contextlib.asynccontextmanager
    async def running(self, concurrency: int = 4) -> AsyncIterator[Tally]:
        stopping = asyncio.Event()
        tasks = [asyncio.create_task(self._publish(stopping)) for _ in range(concurrency)]
        try:
            yield self.tally
        finally:
            stopping.set()
            await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def publishing(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Stream, Outbox]]:
    """A stream into a quorum work queue on the cluster, with an outbox on PostgreSQL."""
    queue = f"{settings.namespace}.faults"
    topology = work_queue(queue, policy=settings.retry, queue_type=settings.queue_type)
    async with await Declarer.connect(CLUSTER_URL, name=f"{settings.namespace}-test") as declarer:
        await declarer.declare(topology)
    async with migrated_database(tmp_path) as database:
        ledger = Outbox(database)
        name = f"{settings.namespace}-app"
        async with Publisher(settings.amqp, fallback=ledger, name=name) as publisher:
            yield Stream(publisher, Route("", queue)), ledger


async def settle(
    stream: Stream,
    ledger: Outbox,
    settings: Settings,
    cluster: Cluster,
    figures: Figures,
    case: str,
) -> None:
    """Relay the outbox to the cluster, read the queue back, count, and check nothing is lost."""
    tally = stream.tally
    tally.check_outcomes()
    report = await relay_outbox(ledger, settings)
    assert report.published == len(tally.persisted)
    ids = await cluster.read_ids(stream.route.routing_key)
    count(figures, case, tally, ids)
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= len(tally.persisted)  # only a stored message may arrive twice


async def test_a_crash_of_the_node_the_publisher_uses_loses_nothing(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    async with publishing(cluster_settings, tmp_path) as (stream, ledger):
        async with stream.running() as tally:
            await eventually(tally.confirmed(BEFORE), timeout=60, what="the first confirms")
            connections = await faults.connections(f"{cluster_settings.namespace}-app-publisher")
            assert len(connections) == 1
            await faults.kill(connections[0][1])
            mark = len(tally.published)
            await eventually(
                tally.confirmed(mark + AFTER), timeout=90, what="confirms from another node"
            )
        await settle(
            stream, ledger, cluster_settings, faults, figures, "kill -9 the publisher's node"
        )


async def test_a_whole_cluster_restart_loses_nothing(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    async with publishing(cluster_settings, tmp_path) as (stream, ledger):
        async with stream.running() as tally:
            await eventually(tally.confirmed(BEFORE), timeout=60, what="the first confirms")
            await faults.stop(1, 2, 3)
            stored = len(tally.persisted)
            await eventually(tally.stored(stored + 1), timeout=30, what="the outbox taking over")
            await faults.start(1, 2, 3)
            mark = len(tally.published)
            await eventually(
                tally.confirmed(mark + AFTER), timeout=120, what="confirms after the restart"
            )
        await settle(
            stream, ledger, cluster_settings, faults, figures, "stop and start the cluster"
        )


async def test_connections_closed_by_the_broker_lose_nothing(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    async with publishing(cluster_settings, tmp_path) as (stream, ledger):
        async with stream.running() as tally:
            await eventually(tally.confirmed(BEFORE), timeout=60, what="the first confirms")
            closed = await faults.close_connections(f"{cluster_settings.namespace}-app-publisher")
            assert closed == 1
            mark = len(tally.published)
            await eventually(tally.confirmed(mark + AFTER), timeout=60, what="confirms again")
        await settle(
            stream, ledger, cluster_settings, faults, figures, "rabbitmqctl close_connection"
        )


async def test_a_memory_alarm_sends_publishes_to_the_outbox_at_once_and_loses_nothing(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    # A timeout this long would show: the alarm's publishes would wait it out.
    patient = cluster_settings.model_copy(update={"publish_timeout": 60.0})
    async with publishing(patient, tmp_path) as (stream, ledger):
        async with stream.running() as tally:
            await eventually(tally.confirmed(BEFORE), timeout=60, what="the first confirms")
            async with faults.memory_alarm():
                started = time.monotonic()
                # The publishes in flight when the block arrives, and every one after it.
                await eventually(tally.stored(20), timeout=20, what="the outbox taking over")
                figures.latency("memory alarm: first publish stored", tally.stored_at[0] - started)
                mark = len(tally.persisted)
                await eventually(tally.stored(mark + 20), timeout=20, what="more stored")
            mark = len(tally.published)
            await eventually(tally.confirmed(mark + AFTER), timeout=60, what="confirms again")
        await settle(stream, ledger, patient, faults, figures, "memory alarm")


async def test_the_first_publish_on_a_fresh_connection_during_an_alarm_is_stored_at_once(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    figures: Figures,
) -> None:
    patient = cluster_settings.model_copy(update={"publish_timeout": 60.0})
    async with publishing(patient, tmp_path) as (stream, ledger):
        async with faults.memory_alarm():
            started = time.monotonic()
            # Bounded far below the publish timeout: waiting it out fails the test.
            result = await asyncio.wait_for(
                stream.publisher.publish(Message(type="fault.test", payload=1), stream.route),
                timeout=20,
            )
            figures.latency("memory alarm: fresh connection stored", time.monotonic() - started)
        assert result.status is PublishStatus.PERSISTED
        assert result.error is not None and "memory/disk alarm" in result.error
        stream.tally.sent.append(result.message_id)
        stream.tally.record(result.message_id, result)
        await settle(
            stream, ledger, patient, faults, figures, "alarm, first publish on a new connection"
        )
