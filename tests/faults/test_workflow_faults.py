"""The workflow worker and its event store on a three-node cluster: a stream of change events,
published in order per entity (with the outbox as fallback), while the node the worker
consumes from is killed, or its connection closed by the broker.

Each case counts: every event sent is stored exactly once in the event store (a redelivery, or
an event both routed and stored in the outbox, is deduplicated by its message id), 0 lost. The
order in which each entity's events were stored is counted too (see docs/events.md for what
the store guarantees), not asserted: an event that went through the outbox is stored when the
relay sends it, after the ones published later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from faults.conftest import Cluster, Figures
from faults.tally import Tally, at_least, count, migrated_database, relay_outbox, stored_ids
from fixtures.outbox import LatencyProxy
from helpers import running
from rabbitry.config import Settings
from rabbitry.events.topology import EventsLayout
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import Eventually

ENTITY = "App\\Models\\FaultTask"
PUBLISHERS = 4  # each publishes its own entities' events one after the other
ENTITIES = 5  # per publisher
BEFORE = 300  # events stored before the fault
AFTER = 300  # and after it: the worker is back on a node


@dataclass
class Events:
    """Change events published until stopped; each publisher task owns a few entities and
    publishes their events in order, one call at a time."""

    publisher: Publisher
    layout: EventsLayout
    tally: Tally = field(default_factory=Tally)
    order: dict[str, tuple[int, int]] = field(default_factory=dict)  # id → (entity, n)

    async def _publish(self, first_entity: int, stopping: asyncio.Event) -> None:
        entities = range(first_entity, first_entity + ENTITIES)
        n = 0
        while not stopping.is_set():
            for entity in entities:
                kind = "insert" if n == 0 else "update"
                body = {"entity": ENTITY, "id": entity, "user": 1, "data": {"n": n}}
                message = Message(type=kind, payload=body)
                self.tally.sent.append(message.id)
                self.order[message.id] = (entity, n)
                route = Route(self.layout.events_exchange, kind)
                self.tally.record(message.id, await self.publisher.publish(message, route))
            n += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Events]:
        stopping = asyncio.Event()
        tasks = [
            asyncio.create_task(self._publish(1 + i * ENTITIES, stopping))
            for i in range(PUBLISHERS)
        ]
        try:
            yield self
        finally:
            stopping.set()
            await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def storing(
    settings: Settings, tmp_path: Path, proxy: LatencyProxy | None = None
) -> AsyncIterator[tuple[Events, Outbox, Database]]:
    """The workflow worker on the cluster, storing into an event store on PostgreSQL, and a
    stream of change events whose outbox is the same database. With a ``proxy`` (to
    PostgreSQL), the worker reaches the database through it, and nothing else does."""
    async with migrated_database(tmp_path) as database:
        url = database.url
        through = Database(url.replace(":5432/", f":{proxy.port}/")) if proxy else database
        try:
            ledger = Outbox(database)
            async with (
                running(WorkflowWorker(settings, through)),
                Publisher(settings.amqp, fallback=ledger, name=f"{settings.namespace}-app") as p,
            ):
                yield Events(p, EventsLayout(settings.namespace)), ledger, database
        finally:
            if through is not database:
                await through.close()


async def settle(
    events: Events,
    ledger: Outbox,
    database: Database,
    settings: Settings,
    eventually: Eventually,
    figures: Figures,
    case: str,
) -> None:
    """Relay the outbox, wait until every event is stored, count, check none lost or twice."""
    tally = events.tally
    tally.check_outcomes()
    await relay_outbox(ledger, settings)

    async def all_stored() -> bool:
        return set(await stored_ids(database)) >= set(tally.sent)

    await eventually(all_stored, timeout=120, what="every event in the store")
    ids = await stored_ids(database)
    late = _out_of_order(events, ids)
    figures.count(f"workflow + event store, {case}: events stored after a later one", late)
    count(figures, f"workflow + event store: {case}", tally, ids)
    assert len(ids) == len(set(ids)), "an event stored twice"


def _out_of_order(events: Events, ids: list[str]) -> int:
    """How many events were stored after a later event of the same entity."""
    last: dict[int, int] = {}
    late = 0
    for message_id in ids:
        entity, n = events.order[message_id]
        if n < last.get(entity, -1):
            late += 1
        last[entity] = max(n, last.get(entity, -1))
    return late


async def test_a_crash_of_the_workflow_workers_node_stores_every_event_once(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    async with storing(cluster_settings, tmp_path) as (events, ledger, database):
        async with events.running():
            await eventually(at_least(database, BEFORE), timeout=90, what="the first events")
            consuming = await faults.connections("workflow", exact=True)  # its one connection
            assert len(consuming) == 1
            await faults.kill(consuming[0][1])
            mark = len(await stored_ids(database))
            await eventually(
                at_least(database, mark + AFTER), timeout=120, what="events stored again"
            )
        await settle(
            events, ledger, database, cluster_settings, eventually, figures, "kill -9 its node"
        )


async def test_a_connection_closed_by_the_broker_stores_every_event_once(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    async with storing(cluster_settings, tmp_path) as (events, ledger, database):
        async with events.running():
            await eventually(at_least(database, BEFORE), timeout=90, what="the first events")
            # The workflow worker consumes its queues over one connection, named after it.
            closed = await faults.close_connections("workflow", exact=True)
            assert closed == 1
            mark = len(await stored_ids(database))
            await eventually(at_least(database, mark + AFTER), timeout=90, what="events again")
        await settle(
            events,
            ledger,
            database,
            cluster_settings,
            eventually,
            figures,
            "rabbitmqctl close_connection",
        )


async def test_a_whole_cluster_restart_stores_every_event_once(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    async with storing(cluster_settings, tmp_path) as (events, ledger, database):
        async with events.running():
            await eventually(at_least(database, BEFORE), timeout=90, what="the first events")
            await faults.stop(1, 2, 3)
            stored = len(events.tally.persisted)

            async def outbox_taking_over() -> bool:
                return len(events.tally.persisted) > stored

            await eventually(outbox_taking_over, timeout=30, what="the outbox taking over")
            await faults.start(1, 2, 3)
            mark = len(await stored_ids(database))
            await eventually(
                at_least(database, mark + AFTER), timeout=180, what="events after the restart"
            )
        await settle(
            events, ledger, database, cluster_settings, eventually, figures, "stop and start"
        )


async def test_a_memory_alarm_stores_every_event_once(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    async with storing(cluster_settings, tmp_path) as (events, ledger, database):
        async with events.running():
            await eventually(at_least(database, BEFORE), timeout=90, what="the first events")
            async with faults.memory_alarm():

                async def outbox_taking_over() -> bool:
                    return len(events.tally.persisted) >= 20

                await eventually(outbox_taking_over, timeout=30, what="the outbox taking over")
            mark = len(await stored_ids(database))
            await eventually(at_least(database, mark + AFTER), timeout=90, what="events again")
        await settle(
            events, ledger, database, cluster_settings, eventually, figures, "memory alarm"
        )


async def test_postgresql_gone_for_ten_seconds_stores_every_event_once(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    # PostgreSQL serves everyone's tests: the worker reaches it through a proxy that this test
    # cuts (every connection hung up, new ones refused), instead of stopping the server.
    # The default retry policy (5 attempts, 1 s doubling) is what must outlast the outage.
    defaults = Settings()
    patient = cluster_settings.model_copy(
        update={
            "max_attempts": defaults.max_attempts,
            "retry_base_delay": defaults.retry_base_delay,
            "retry_max_delay": defaults.retry_max_delay,
        }
    )
    async with (
        LatencyProxy(0.0, upstream=("127.0.0.1", 5432)) as proxy,
        storing(patient, tmp_path, proxy) as (events, ledger, database),
    ):
        async with events.running():
            await eventually(at_least(database, BEFORE), timeout=90, what="the first events")
            await proxy.cut()
            await asyncio.sleep(10)  # the outage itself, not a synchronisation
            proxy.refusing = False
            mark = len(await stored_ids(database))
            await eventually(at_least(database, mark + AFTER), timeout=120, what="events again")
        await settle(
            events, ledger, database, patient, eventually, figures, "PostgreSQL gone for 10 s"
        )
        layout = EventsLayout(patient.namespace)
        dead = await faults.read_ids(f"{layout.event_sourcing_queue}.dlq")
        assert dead == []
