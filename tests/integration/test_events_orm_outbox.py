"""ORM change events through the outbox, against RabbitMQ and real databases: the application's
tables share the database with Rabbitry's outbox, so each flush writes its events as ledger rows
in the application's own transaction. Committed events reach the event store (through a real
workflow worker) and their rows are marked processed; rolled-back ones leave nothing; events
the broker could not take, or that a dead process never published, are delivered by the real
relay. Nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import String, update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fixtures.events import make_settings
from helpers import AMQP_URL, DEAD_AMQP_URL, RecordingPublisher, eventually_true, running, take_all
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.events.change import RecordedEvent
from rabbitry.events.delivery import DeliveryMode, OutboxDelivery
from rabbitry.events.emitter import Emitter, acting_as
from rabbitry.events.orm import ChangeTracker
from rabbitry.events.store import EventStore
from rabbitry.events.topology import EventsLayout, events_topology
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.publisher import Publisher, PublishStatus
from rabbitry.outbox.filters import Origin, RequeueFilter
from rabbitry.outbox.message import OutboxMessage
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.store import Outbox
from rabbitry.storage.database import Database


class AppBase(DeclarativeBase):
    pass


class Order(AppBase):
    __tablename__ = "shop_orders"
    __rabbitry_entity__ = "App\\Models\\Order"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]
    state: Mapped[str] = mapped_column(String(20), default="new")


ORDER = "App\\Models\\Order"


@contextlib.asynccontextmanager
async def app_engine(url: str, rabbitry: Database | None = None) -> AsyncIterator[AsyncEngine]:
    """The application's own engine on the database Rabbitry's outbox lives in."""
    if rabbitry is not None:
        # Rabbitry's engine switches a SQLite file to WAL on its first connection, which needs
        # the file to itself: as a running process would have, do it before the app writes.
        async with rabbitry.engine.connect():
            pass
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(AppBase.metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


def tracked(engine: AsyncEngine, tracker: ChangeTracker) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, sync_session_class=tracker.session_class)


async def ledger_rows(ledger: Outbox) -> list[OutboxMessage]:
    return await ledger.rows(RequeueFilter(), state=None)


def relay(settings: Settings, db: Database) -> RelayService:
    return RelayService(settings, interval=0.2, db=db)


async def relayed(settings: Settings, db: Database, order_id: int, *, what: str) -> RecordedEvent:
    """Run the workflow worker and the relay until the one event of order ``order_id`` is
    stored and no ledger row is left pending; that event."""
    store, ledger = EventStore(db), Outbox(db)
    async with running(WorkflowWorker(settings, db)), running(relay(settings, db)):

        async def stored() -> bool:
            return len(await store.history(ORDER, order_id)) == 1

        await eventually_true(stored, timeout=30, what=what)

        async def processed() -> bool:
            return (await ledger.count(RequeueFilter())) == 0

        await eventually_true(processed, what=f"the ledger row of {what} marked processed")
    (event,) = await store.history(ORDER, order_id)
    return event


async def test_committed_changes_are_stored_and_their_rows_marked_processed(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    ledger, store = Outbox(events_db), EventStore(events_db)
    async with (
        app_engine(events_db_url, events_db) as engine,
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(events_settings.amqp, fallback=ledger) as publisher,
    ):
        tracker = ChangeTracker(
            Emitter(publisher, events_settings), delivery=OutboxDelivery(ledger, publisher)
        )
        assert tracker.delivery_for(engine) is DeliveryMode.OUTBOX  # the outbox's database
        sessions = tracked(engine, tracker)
        with acting_as(3):
            async with sessions.begin() as session:
                session.add(Order(id=1, total=10))
            async with sessions.begin() as session:
                await session.execute(update(Order).values(state="paid"))
        await tracker.aclose()
        assert tracker.pending == 0

        async def stored() -> bool:
            return len(await store.history(ORDER, 1)) == 2

        await eventually_true(stored, what="two stored ORM events")
    history = await store.history(ORDER, 1)
    assert [(e.type, e.user, e.data) for e in history] == [
        ("insert", 3, {"id": 1, "total": 10, "state": "new"}),
        ("update", 3, {"state": "paid"}),
    ]
    rows = await ledger_rows(ledger)
    assert [r.message_id for r in rows] == [e.message_id for e in history]
    assert all(r.processed and r.attempts == 1 for r in rows)
    assert {r.origin for r in rows} == {Origin.CONTINGENCY.value}


async def test_rolled_back_changes_leave_no_row_and_send_no_message(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    ledger, store = Outbox(events_db), EventStore(events_db)
    async with (
        app_engine(events_db_url, events_db) as engine,
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(events_settings.amqp, fallback=ledger) as publisher,
    ):
        tracker = ChangeTracker(
            Emitter(publisher, events_settings), delivery=OutboxDelivery(ledger, publisher)
        )
        sessions = tracked(engine, tracker)
        async with sessions() as session:
            session.add(Order(id=1, total=1))
            await session.flush()
            await session.rollback()
        async with sessions.begin() as session:
            session.add(Order(id=2, total=2))
            await session.flush()
            savepoint = await session.begin_nested()
            session.add(Order(id=3, total=3))
            await session.flush()
            await savepoint.rollback()
        await tracker.aclose()

        async def marker_stored() -> bool:
            return len(await store.history(ORDER, 2)) == 1

        await eventually_true(marker_stored, what="the committed insert")
        # The workflow drained its queue: nothing else was ever sent.
        assert await take_all(EventsLayout(events_settings.namespace).event_sourcing_queue) == []
    assert await store.history(ORDER, 1) == [] and await store.history(ORDER, 3) == []
    (row,) = await ledger_rows(ledger)
    assert json.loads(row.body)["id"] == 2 and row.processed


async def test_with_the_broker_unreachable_the_row_waits_and_the_relay_delivers_it(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    offline = make_settings(namespace=events_settings.namespace, amqp_url=DEAD_AMQP_URL)
    ledger = Outbox(events_db)
    async with app_engine(events_db_url, events_db) as engine:
        async with Publisher(offline.amqp, fallback=ledger) as publisher:
            tracker = ChangeTracker(
                Emitter(publisher, offline),
                auto_publish=False,
                delivery=OutboxDelivery(ledger, publisher),
            )
            async with tracked(engine, tracker).begin() as session:
                session.add(Order(id=5, total=50))
            results = await tracker.flush()  # does not raise: the event is in the outbox
            await tracker.aclose()
        assert [r.status for r in results] == [PublishStatus.PERSISTED]
        (row,) = await ledger.rows(RequeueFilter(origin=Origin.CONTINGENCY))
        assert row.message_id == results[0].message_id and row.attempts == 1
        assert row.last_error is not None and "cannot connect" in row.last_error

        # The broker is back (the real one): the relay sends the row after its back-off.
    event = await relayed(events_settings, events_db, 5, what="the relayed ORM event")
    assert event.message_id == row.message_id
    assert event.data == {"id": 5, "total": 50, "state": "new"}


async def test_the_relay_never_sends_a_row_the_tracker_is_publishing(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    async with await Declarer.connect(AMQP_URL) as declarer:
        await declarer.declare(events_topology(events_settings))
    ledger = Outbox(events_db)
    busy_relay = RelayService(events_settings, interval=0.02, db=events_db)
    async with (
        app_engine(events_db_url, events_db) as engine,
        running(busy_relay),
        Publisher(events_settings.amqp, fallback=ledger) as publisher,
    ):
        tracker = ChangeTracker(
            Emitter(publisher, events_settings), delivery=OutboxDelivery(ledger, publisher)
        )
        sessions = tracked(engine, tracker)
        for n in range(1, 21):
            async with sessions.begin() as session:
                session.add(Order(id=n, total=n))
            await asyncio.sleep(0.01)
        await tracker.aclose()
        passes = busy_relay.passes

        async def more_passes() -> bool:
            return busy_relay.passes > passes + 3

        await eventually_true(more_passes, what="more relay passes")
    assert busy_relay.published == 0
    sent = await take_all(EventsLayout(events_settings.namespace).event_sourcing_queue)
    rows = await ledger_rows(ledger)
    assert sorted(m.message_id or "" for m in sent) == sorted(r.message_id for r in rows)
    assert len(rows) == 20 and all(r.processed and r.attempts == 1 for r in rows)


async def test_events_committed_by_a_process_cancelled_before_publishing_are_relayed(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    ledger = Outbox(events_db)
    dies = RecordingPublisher(fallback=ledger)
    dies.crash = asyncio.CancelledError()  # the process stops before anything is sent
    async with app_engine(events_db_url, events_db) as engine:
        tracker = ChangeTracker(
            Emitter(dies, events_settings),
            auto_publish=False,
            delivery=OutboxDelivery(ledger, dies, lease=dt.timedelta(seconds=1)),
        )
        async with tracked(engine, tracker).begin() as session:
            session.add(Order(id=6, total=60))
        try:
            await tracker.flush()
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the publisher was expected to be cancelled")
    (row,) = await ledger_rows(ledger)
    assert not row.processed and row.attempts == 0
    event = await relayed(events_settings, events_db, 6, what="the relayed ORM event")
    assert event.message_id == row.message_id


# A process that commits and dies at once: a second after_commit listener, run right after the
# tracker's, ends the process before the loop ever runs the publish the tracker scheduled.
CRASHING_APP = """
import asyncio, datetime as dt, os, sys
from sqlalchemy import String, event
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from rabbitry.config import Settings
from rabbitry.events.emitter import Emitter
from rabbitry.events.delivery import OutboxDelivery
from rabbitry.events.orm import ChangeTracker
from rabbitry.messaging.publisher import Publisher
from rabbitry.outbox.store import Outbox
from rabbitry.storage.database import Database

class Base(DeclarativeBase):
    pass

class Order(Base):
    __tablename__ = "shop_orders"
    __rabbitry_entity__ = "App\\\\Models\\\\Order"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]
    state: Mapped[str] = mapped_column(String(20), default="new")

async def main(url, namespace, amqp_url):
    settings = Settings(namespace=namespace, amqp_url=amqp_url, database_url=url)
    outbox = Outbox(Database(url))
    publisher = Publisher(settings.amqp, fallback=outbox)
    delivery = OutboxDelivery(outbox, publisher, lease=dt.timedelta(seconds=1))
    tracker = ChangeTracker(Emitter(publisher, settings), delivery=delivery)
    sessions = async_sessionmaker(
        create_async_engine(url), sync_session_class=tracker.session_class
    )
    event.listen(sessions.kw["sync_session_class"], "after_commit", lambda s: os._exit(9))
    async with sessions.begin() as session:
        session.add(Order(id=7, total=70))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_events_of_a_process_killed_right_after_commit_are_relayed(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    ledger = Outbox(events_db)
    async with app_engine(events_db_url, events_db):
        app = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CRASHING_APP,
            events_db_url,
            events_settings.namespace,
            AMQP_URL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(app.communicate(), timeout=60)
    assert app.returncode == 9, stderr.decode()
    (row,) = await ledger_rows(ledger)  # committed with the order, never published
    assert not row.processed and json.loads(row.body)["id"] == 7
    event = await relayed(events_settings, events_db, 7, what="the event of the dead process")
    assert event.message_id == row.message_id and event.data == {
        "id": 7,
        "total": 70,
        "state": "new",
    }


async def test_memory_delivery_stays_available_for_a_database_without_the_ledger(
    events_settings: Settings, events_db: Database, tmp_path: Path
) -> None:
    ledger, store = Outbox(events_db), EventStore(events_db)
    own = make_settings(namespace=events_settings.namespace)
    async with (
        app_engine(f"sqlite+aiosqlite:///{tmp_path}/app-only.db") as engine,
        running(WorkflowWorker(events_settings, events_db)),
        Publisher(own.amqp, fallback=ledger) as publisher,
    ):
        tracker = ChangeTracker(Emitter(publisher, own), delivery=OutboxDelivery(ledger, publisher))
        assert tracker.delivery_for(engine) is DeliveryMode.MEMORY
        async with tracked(engine, tracker).begin() as session:
            session.add(Order(id=8, total=80))
        await tracker.aclose()

        async def stored() -> bool:
            return len(await store.history(ORDER, 8)) == 1

        await eventually_true(stored, what="the event published from memory")
    assert await ledger_rows(ledger) == []
