"""The event store under bad input: an event the database could not keep never spoils its
batch. It is dead-lettered at once with its reason; the valid events beside it are stored
once, in arrival order, so an entity's state is never rebuilt from stale updates. With one
workflow worker and with two, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg  # type: ignore[import-untyped]
import pytest
from aio_pika.abc import AbstractIncomingMessage

from fixtures.events import make_settings
from helpers import (
    AMQP_URL,
    POSTGRES_ADMIN,
    delete_namespace,
    eventually_true,
    scratch_database,
    take_all,
)
from rabbitry.config import Settings
from rabbitry.errors import MessageError
from rabbitry.events.change import ChangeEvent, ChangeType
from rabbitry.events.message_log import MessageLog
from rabbitry.events.store import EventStore, Incoming
from rabbitry.events.topology import EventsLayout
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import dlq_name
from rabbitry.storage.database import Database

ENTITY = "App\\Models\\Stock"
UPDATES = 2000
ENTITIES = 4


@contextlib.asynccontextmanager
async def workflow_workers(
    settings: Settings, url: str, count: int
) -> AsyncIterator[list[WorkflowWorker]]:
    """``count`` workflow workers, each on a database connection pool of its own."""
    stopping = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        services: list[WorkflowWorker] = []
        tasks: list[asyncio.Task[None]] = []
        for _ in range(count):
            database = Database(url)
            stack.push_async_callback(database.close)
            services.append(WorkflowWorker(settings, database))
        try:
            tasks = [asyncio.create_task(s.run(stopping)) for s in services]
            for service in services:
                await asyncio.wait_for(service.connected.wait(), timeout=15)
            yield services
        finally:
            stopping.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


def update(entity_id: int, n: int) -> Message:
    return Message("update", {"entity": ENTITY, "id": entity_id, "user": 1, "data": {"n": n}})


def raw(kind: str, body: bytes) -> Message:
    """A message whose body bytes are sent as they are (a foreign publisher's)."""
    return Message(kind, None, raw_body=body)


BAD = {
    # Python's json.dumps writes NaN by default; PostgreSQL's json type and PHP refuse it.
    "nan": raw(
        "update", b'{"entity": "App\\\\Models\\\\Stock", "id": 1, "user": 1, "data": {"n": NaN}}'
    ),
    "nul": raw("update", b'{"entity": "App\\u0000Stock", "id": 1, "user": 1, "data": {"n": 1}}'),
    "surrogate": raw(
        "update", b'{"entity": "Stock", "id": 1, "user": 1, "data": {"s": "\\ud800"}}'
    ),
}


async def publish_foreign(
    exchange: str, routing_key: str, body: bytes, headers: dict[str, object]
) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(
            aio_pika.Message(body, headers=headers),  # type: ignore[arg-type]
            routing_key,
        )


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_bad_event_is_dead_lettered_alone_and_the_valid_ones_beside_it_are_stored(
    events_settings: Settings, events_db: Database, events_db_url: str, workers: int
) -> None:
    layout = EventsLayout(events_settings.namespace)
    route = Route(layout.events_exchange, "update")
    messages = [update(i % ENTITIES, i // ENTITIES + 1) for i in range(UPDATES)]
    # The bad ones sit among the first valid updates, in the same batch.
    for offset, bad in enumerate(BAD.values()):
        messages.insert(10 + 7 * offset, bad)
    store = EventStore(events_db)
    async with workflow_workers(events_settings, events_db_url, 1):
        pass  # declares the topology, then stops: the messages wait in the queue for all
    async with Publisher(events_settings.amqp) as publisher:
        for start in range(0, len(messages), 500):
            results = await publisher.publish_many(
                [(m, route) for m in messages[start : start + 500]]
            )
            assert all(r.ok for r in results)
    # An rr_id the store cannot keep (over 255 characters), from a foreign client.
    await publish_foreign(
        layout.events_exchange,
        "update",
        b'{"entity": "Stock", "id": 1, "user": 1, "data": {}}',
        {"rr_job": "update", "rr_id": "x" * 300},
    )
    dlq = dlq_name(layout.event_sourcing_queue)
    dead: list[AbstractIncomingMessage] = []
    async with workflow_workers(events_settings, events_db_url, workers):

        async def stored_and_dead() -> bool:
            dead.extend(await take_all(dlq))
            total = sum([len(await store.history(ENTITY, i)) for i in range(ENTITIES)])
            return total == UPDATES and len(dead) >= len(BAD) + 1

        await eventually_true(stored_and_dead, timeout=90, what="every valid event stored")
    reasons = sorted(str(m.headers["x-rabbitry-reason"]) for m in dead)
    assert len(reasons) == len(BAD) + 1
    assert any("NaN" in r for r in reasons)
    assert any("U+0000" in r for r in reasons)
    assert any("surrogate" in r for r in reasons)
    assert any("message id" in r for r in reasons)
    assert await take_all(dlq) == []  # no valid event was dead-lettered with them
    per_entity = UPDATES // ENTITIES
    for entity_id in range(ENTITIES):
        history = await store.history(ENTITY, entity_id)
        assert [e.version for e in history] == list(range(1, per_entity + 1))
        assert sorted(e.data["n"] for e in history if e.data) == list(range(1, per_entity + 1))
        if workers == 1:
            # One consumer takes the queue in order: arrival order is version order, so the
            # state is the last update, never an older one stored late.
            assert [e.data["n"] for e in history if e.data] == list(range(1, per_entity + 1))
            state = await store.state(ENTITY, entity_id)
            assert state is not None and state.data == {"n": per_entity}


def unvalidated(entity: str, data: dict[str, object]) -> Incoming:
    """An event that skipped validation (as a future bug, or code that builds events by hand,
    might hand it over), to show what the store itself does with a value the database
    refuses."""
    change = object.__new__(ChangeEvent)
    fields = {"type": ChangeType.UPDATE, "entity": entity, "id": 1, "user": 1, "data": data}
    for name, value in fields.items():
        object.__setattr__(change, name, value)
    return Incoming(change, str(uuid.uuid4()), dt.datetime.now(dt.UTC))


def incoming(change: ChangeEvent) -> Incoming:
    return Incoming(change, str(uuid.uuid4()), dt.datetime.now(dt.UTC))


async def test_the_store_splits_a_batch_the_database_refuses_down_to_the_offending_event(
    events_db: Database,
) -> None:
    good = [incoming(ChangeEvent(ChangeType.UPDATE, "split", 1, 1, {"n": n})) for n in range(9)]
    # A lone surrogate in the entity: no driver can encode it, on either database.
    bad = unvalidated("split\ud800", {"n": -1})
    batch = [*good[:5], bad, *good[5:]]
    store = EventStore(events_db)
    results = await store.append_each(batch)
    assert isinstance(results[5], MessageError)
    assert "refused" in str(results[5])
    stored = [r for i, r in enumerate(results) if i != 5]
    assert all(r is not None and not isinstance(r, MessageError) for r in stored)
    history = await store.history("split", 1)
    assert [(e.version, e.data) for e in history] == [(v + 1, {"n": v}) for v in range(9)]
    # Stored once: the same batch again stores nothing more.
    again = await store.append_each(good)
    assert again == [None] * len(good)


async def test_the_message_log_keeps_the_messages_beside_one_it_cannot_keep(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    layout = EventsLayout(events_settings.namespace)
    good = [Message("invoice.paid", {"n": n}) for n in range(20)]
    bad = raw("invoice.paid", b'{"total": Infinity}')
    async with (
        Publisher(events_settings.amqp) as publisher,
        workflow_workers(events_settings, events_db_url, 1),
    ):
        route = Route(layout.modules_exchange, "invoice.paid")
        results = await publisher.publish_many([(m, route) for m in [*good[:10], bad, *good[10:]]])
        assert all(r.ok for r in results)
        log = MessageLog(events_db)
        dlq = dlq_name(layout.module_queue("workflow"))
        dead: list[AbstractIncomingMessage] = []

        async def logged() -> bool:
            dead.extend(await take_all(dlq))
            return len(await log.recent()) == len(good) and len(dead) == 1

        await eventually_true(logged, timeout=30, what="20 logged, 1 dead-lettered")
    assert {e.message_id for e in await log.recent()} == {m.id for m in good}
    (reason,) = [str(m.headers["x-rabbitry-reason"]) for m in dead]
    assert "Infinity" in reason


@pytest.mark.parametrize("workers", [1, 2])
async def test_workers_store_every_event_once_through_terminated_database_connections(
    tmp_path: Path, workers: int
) -> None:
    """PostgreSQL only: an operator's ``pg_terminate_backend`` (or a failover) mid-run."""
    settings = make_settings()
    try:
        async with scratch_database("postgresql", tmp_path) as url:
            database = Database(url)
            try:
                await database.upgrade()
                await _store_while_terminating(settings, url, database, workers)
            finally:
                await database.close()
    finally:
        await delete_namespace(settings.namespace)


async def _store_while_terminating(
    settings: Settings, url: str, database: Database, workers: int
) -> None:
    route = Route(EventsLayout(settings.namespace).events_exchange, "update")
    store = EventStore(database)
    terminated = 0
    async with (
        workflow_workers(settings, url, workers),
        Publisher(settings.amqp) as publisher,
    ):
        for start in range(0, UPDATES, 250):
            batch = [
                (update(i % ENTITIES, i // ENTITIES + 1), route) for i in range(start, start + 250)
            ]
            assert all(r.ok for r in await publisher.publish_many(batch))
            if start % 500 == 0:
                terminated += await terminate_backends(url)

        async def all_stored() -> bool:
            counts = [len(await store.history(ENTITY, i)) for i in range(ENTITIES)]
            return sum(counts) == UPDATES

        await eventually_true(all_stored, timeout=90, what="every event stored")
    assert terminated > 0
    for entity_id in range(ENTITIES):
        history = await store.history(ENTITY, entity_id)
        assert [e.version for e in history] == list(range(1, UPDATES // ENTITIES + 1))


async def terminate_backends(url: str) -> int:
    """End every server process of the database at ``url`` (its clients see them die)."""
    name = url.rsplit("/", 1)[-1]
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        ended = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await admin.close()
    return sum(1 for row in ended if row[0])
