"""The workflow module against a real broker and real databases: change events emitted by
Python code or ORM commits end up in the event store, once, in order; invalid ones are
dead-lettered with their reason; several workers never break the version sequence."""

from __future__ import annotations

import contextlib
import json

from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import String, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fixtures.events import make_settings
from helpers import DEAD_AMQP_URL, eventually_true, running, take_all
from rabbitry import metrics
from rabbitry.config import Settings
from rabbitry.events.change import ChangeEvent, ChangeType
from rabbitry.events.delivery import OutboxDelivery
from rabbitry.events.emitter import Emitter, acting_as
from rabbitry.events.orm import ChangeTracker
from rabbitry.events.store import EventStore
from rabbitry.events.topology import EventsLayout
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import dlq_name
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.store import Outbox
from rabbitry.storage.database import Database


class AppBase(DeclarativeBase):
    pass


class Ticket(AppBase):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="open")


TICKET = f"{__name__}.Ticket"


async def stored_count(store: EventStore, entity: str, ids: range) -> int:
    return sum([len(await store.history(entity, i)) for i in ids])


async def test_emitted_changes_are_stored_in_order_with_versions(
    events_settings: Settings, events_db: Database
) -> None:
    store = EventStore(events_db)
    async with (
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(events_settings.amqp, fallback=Outbox(events_db)) as publisher,
    ):
        emitter = Emitter(publisher, events_settings)
        with acting_as(42):
            first = await emitter.insert("App\\Models\\Order", 7, {"total": 10, "state": "new"})
            await emitter.update("App\\Models\\Order", 7, {"total": 12})
        await emitter.delete("App\\Models\\Order", 7)
        assert first.status is PublishStatus.PUBLISHED

        async def three() -> bool:
            return len(await store.history("App\\Models\\Order", 7)) == 3

        await eventually_true(three, what="three stored events")
    history = await store.history("App\\Models\\Order", 7)
    assert [(e.version, e.type, e.user) for e in history] == [
        (1, "insert", 42),
        (2, "update", 42),
        (3, "delete", "system"),
    ]
    assert history[0].message_id == first.message_id
    state = await store.state("App\\Models\\Order", 7)
    assert state is not None and state.deleted and state.data == {"total": 12, "state": "new"}


async def test_orm_commits_reach_the_event_store_and_rollbacks_do_not(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    engine = create_async_engine(events_db_url)
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)
    store = EventStore(events_db)
    try:
        async with (
            running(WorkflowWorker(events_settings, events_db)),
            Publisher(events_settings.amqp, fallback=Outbox(events_db)) as publisher,
        ):
            delivery = OutboxDelivery(Outbox(events_db), publisher)
            tracker = ChangeTracker(Emitter(publisher, events_settings), delivery=delivery)
            sessions = async_sessionmaker(
                engine, sync_session_class=tracker.session_class, expire_on_commit=False
            )
            with acting_as(5):
                async with sessions.begin() as session:
                    session.add_all([Ticket(id=1, title="a"), Ticket(id=2, title="b")])
                async with sessions.begin() as session:
                    (await session.get_one(Ticket, 1)).title = "A"
                async with sessions() as session:
                    (await session.get_one(Ticket, 2)).title = "never"
                    await session.flush()
                    await session.rollback()
                async with sessions.begin() as session:
                    await session.execute(update(Ticket).values(status="closed"))
            await tracker.aclose()

            async def stored() -> bool:
                return await stored_count(store, TICKET, range(1, 3)) == 5

            await eventually_true(stored, what="five stored ORM events")
        one, two = await store.history(TICKET, 1), await store.history(TICKET, 2)
        assert [(e.type, e.data) for e in one] == [
            ("insert", {"id": 1, "title": "a", "status": "open"}),
            ("update", {"title": "A"}),
            ("update", {"status": "closed"}),
        ]
        assert [e.type for e in two] == ["insert", "update"]
        assert {e.user for e in one + two} == {5}
        state = await store.state(TICKET, 2)
        assert state is not None and state.data == {"id": 2, "title": "b", "status": "closed"}
    finally:
        await engine.dispose()


async def test_invalid_events_are_dead_lettered_with_their_reason(
    events_settings: Settings, events_db: Database
) -> None:
    layout = EventsLayout(events_settings.namespace)
    route = Route(layout.events_exchange, "insert")
    async with (
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(events_settings.amqp) as publisher,
    ):
        await publisher.publish(Message("insert", {"entity": "e", "id": 1, "user": 1}), route)
        await publisher.publish(Message("upsert", {"entity": "e", "id": 1, "user": 1}), route)
        await publisher.publish(
            Message("insert", {"entity": "e", "id": 2, "user": 1, "data": {}}), route
        )
        dlq = dlq_name(layout.event_sourcing_queue)
        dead: list[AbstractIncomingMessage] = []

        async def both_dead() -> bool:
            dead.extend(await take_all(dlq))
            return len(dead) >= 2

        await eventually_true(both_dead, what="two dead-lettered events")
    reasons = sorted(str(m.headers["x-rabbitry-reason"]) for m in dead)
    assert reasons == [
        "'data' is required for insert",
        "unknown change type 'upsert': expected insert, update or delete",
    ]
    store = EventStore(events_db)
    assert await store.history("e", 1) == []
    assert [e.version for e in await store.history("e", 2)] == [1]


async def test_the_event_queue_records_handler_seconds(
    events_settings: Settings, events_db: Database
) -> None:
    # Batch calls (untraced event queues) observe rabbitry_handler_seconds once per call.
    layout = EventsLayout(events_settings.namespace)
    queue = layout.partition_queue(0)

    def calls() -> float:
        labels = {"queue": queue}
        return metrics.REGISTRY.get_sample_value("rabbitry_handler_seconds_count", labels) or 0

    async with (
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(events_settings.amqp) as publisher,
    ):
        route = Route(layout.events_exchange, "insert")
        for i in range(3):
            await publisher.publish(
                Message("insert", {"entity": "m", "id": i, "user": 1, "data": {}}), route
            )
        store = EventStore(events_db)

        async def all_stored() -> bool:
            return await stored_count(store, "m", range(3)) == 3

        await eventually_true(all_stored, what="three stored events")
    assert 1 <= calls() <= 3
    seconds = metrics.REGISTRY.get_sample_value("rabbitry_handler_seconds_sum", {"queue": queue})
    assert seconds is not None and seconds > 0


async def test_a_redelivered_message_is_stored_once(
    events_settings: Settings, events_db: Database
) -> None:
    layout = EventsLayout(events_settings.namespace)
    route = Route(layout.events_exchange, "update")
    message = Message("update", {"entity": "e", "id": 1, "user": 1, "data": {"n": 1}})
    marker = Message("update", {"entity": "e", "id": 1, "user": 1, "data": {"n": 2}})
    store = EventStore(events_db)
    async with (
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(events_settings.amqp) as publisher,
    ):
        for _ in range(3):
            await publisher.publish(message, route)
        await publisher.publish(marker, route)

        async def marker_stored() -> bool:
            return any(e.message_id == marker.id for e in await store.history("e", 1))

        await eventually_true(marker_stored, what="the marker event")
    assert [(e.version, e.message_id) for e in await store.history("e", 1)] == [
        (1, message.id),
        (2, marker.id),
    ]


async def test_several_workflow_workers_keep_versions_gap_free(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    extra = [Database(events_db_url) for _ in range(2)]
    store = EventStore(events_db)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for db in [events_db, *extra]:
                await stack.enter_async_context(running(WorkflowWorker(events_settings, db)))
            publisher = await stack.enter_async_context(Publisher(events_settings.amqp))
            emitter = Emitter(publisher, events_settings)
            changes = [
                ChangeEvent(ChangeType.UPDATE, "stock", i % 4, 1, {"n": i}) for i in range(600)
            ]
            for start in range(0, len(changes), 50):
                await emitter.emit(changes[start : start + 50])

            async def all_stored() -> bool:
                return await stored_count(store, "stock", range(4)) == 600

            await eventually_true(all_stored, timeout=60, what="600 stored events")
    finally:
        for db in extra:
            await db.close()
    for entity_id in range(4):
        history = await store.history("stock", entity_id)
        assert [e.version for e in history] == list(range(1, 151))
    assert len({e.message_id for i in range(4) for e in await store.history("stock", i)}) == 600


async def test_without_a_broker_events_wait_in_the_outbox_and_are_stored_once_relayed(
    events_settings: Settings, events_db: Database
) -> None:
    offline = make_settings(
        namespace=events_settings.namespace, rabbit_active=False, database_url=None
    )
    ledger = Outbox(events_db)
    async with Publisher(offline.amqp, fallback=ledger) as publisher:
        result = await Emitter(publisher, offline).insert("orders", 3, {"total": 1})
    assert result.status is PublishStatus.PERSISTED
    (row,) = await ledger.rows(RequeueFilter())
    assert row.type == "insert" and json.loads(row.body)["id"] == 3
    store = EventStore(events_db)
    async with (
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(events_settings.amqp) as publisher,
    ):
        report = await RelayService(events_settings, db=events_db).run_once(ledger, publisher)
        assert report is not None and report.published == 1

        async def stored() -> bool:
            return len(await store.history("orders", 3)) == 1

        await eventually_true(stored, what="the relayed event")
    (event,) = await store.history("orders", 3)
    assert event.message_id == result.message_id and event.data == {"total": 1}


async def test_orm_events_go_to_the_outbox_when_the_broker_is_unreachable(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    # A port nobody listens on: the connection is refused, as when RabbitMQ is down.
    unreachable = make_settings(namespace=events_settings.namespace, amqp_url=DEAD_AMQP_URL)
    engine = create_async_engine(events_db_url)
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)
    ledger = Outbox(events_db)
    try:
        async with Publisher(unreachable.amqp, fallback=ledger) as publisher:
            delivery = OutboxDelivery(ledger, publisher)
            tracker = ChangeTracker(Emitter(publisher, unreachable), delivery=delivery)
            sessions = async_sessionmaker(engine, sync_session_class=tracker.session_class)
            async with sessions.begin() as session:
                session.add(Ticket(id=9, title="offline"))
            await tracker.aclose()
            assert tracker.pending == 0
    finally:
        await engine.dispose()
    (row,) = await ledger.rows(RequeueFilter())
    assert row.type == "insert"
    assert json.loads(row.body) == {
        "entity": TICKET,
        "id": 9,
        "user": "system",
        "data": {"id": 9, "title": "offline", "status": "open"},
    }
