"""Outbox delivery of ORM change events: rows written in the application's own transaction.

The application's tables and Rabbitry's outbox share one local SQLite file; the publisher only
records what it is handed (the integration tests publish to RabbitMQ and run the relay).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import String, delete, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from helpers import RecordingPublisher
from rabbitry.config import Settings
from rabbitry.errors import ConfigError
from rabbitry.events.delivery import DeliveryMode, MemoryDelivery, OutboxDelivery, same_database
from rabbitry.events.emitter import Emitter, acting_as
from rabbitry.events.orm import ChangeTracker
from rabbitry.messaging.envelope import encode_headers
from rabbitry.messaging.publisher import PublishStatus, Route
from rabbitry.outbox.codec import headers_to_json
from rabbitry.outbox.filters import Origin, RequeueFilter
from rabbitry.outbox.message import OutboxMessage
from rabbitry.outbox.store import Outbox
from rabbitry.storage.database import Database


class Base(DeclarativeBase):
    pass


class Parcel(Base):
    __tablename__ = "parcels"
    __rabbitry_entity__ = "App\\Models\\Parcel"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(50))


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    await db.upgrade()
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield db
    await db.close()


@pytest.fixture
def ledger(database: Database) -> Outbox:
    return Outbox(database)


@pytest.fixture
def publisher(ledger: Outbox) -> RecordingPublisher:
    return RecordingPublisher(fallback=ledger)


@pytest.fixture
async def tracker(ledger: Outbox, publisher: RecordingPublisher) -> AsyncIterator[ChangeTracker]:
    tracker = ChangeTracker(
        Emitter(publisher, Settings(namespace="unit")),
        auto_publish=False,
        delivery=OutboxDelivery(ledger, publisher),
    )
    yield tracker
    publisher.status, publisher.crash = PublishStatus.PUBLISHED, None
    await tracker.aclose()


@pytest.fixture
async def sessions(
    tmp_path: Path, tracker: ChangeTracker
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    # The application's own engine on the same file: a different engine, the same database.
    engine: AsyncEngine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/./shop.db")
    yield async_sessionmaker(
        engine, sync_session_class=tracker.session_class, expire_on_commit=False
    )
    await engine.dispose()


async def all_rows(ledger: Outbox) -> list[OutboxMessage]:
    return await ledger.rows(RequeueFilter(), state=None)


async def test_outbox_delivery_applies_on_the_outboxs_database_and_memory_elsewhere(
    tmp_path: Path,
    tracker: ChangeTracker,
    sessions: async_sessionmaker[AsyncSession],
    database: Database,
    publisher: RecordingPublisher,
) -> None:
    assert tracker.delivery_for(sessions.kw["bind"]) is DeliveryMode.OUTBOX
    assert tracker.delivery_for(database.engine) is DeliveryMode.OUTBOX
    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    assert tracker.delivery_for(other) is DeliveryMode.MEMORY
    everywhere = OutboxDelivery(Outbox(database), publisher, everywhere=True)
    assert everywhere.mode_for(other.sync_engine) is DeliveryMode.OUTBOX
    await other.dispose()
    # The publisher's fallback is the outbox, but the tracker guesses nothing from it: memory
    # unless it is given the outbox delivery.
    emitter = Emitter(publisher, Settings(namespace="unit"))
    assert ChangeTracker(emitter).delivery_for(database.engine) is DeliveryMode.MEMORY
    memory = ChangeTracker(emitter, delivery=MemoryDelivery())
    assert memory.delivery_for(database.engine) is DeliveryMode.MEMORY
    with pytest.raises(ConfigError, match="no outbox rows"):
        MemoryDelivery().stage(None, [])  # type: ignore[arg-type]


def test_same_database_ignores_drivers_users_and_loopback_spellings(tmp_path: Path) -> None:
    pg = "postgresql+asyncpg://root@127.0.0.1:5432/shop"
    assert same_database(make_url(pg), make_url("postgresql+psycopg://app:pw@localhost/shop"))
    assert not same_database(make_url(pg), make_url("postgresql://root@127.0.0.1:5432/other"))
    assert not same_database(make_url(pg), make_url("postgresql://root@127.0.0.1:5433/shop"))
    assert not same_database(make_url(pg), make_url("postgresql://root@db.internal/shop"))
    assert not same_database(make_url(pg), make_url(f"sqlite:///{tmp_path}/shop"))
    a = make_url(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert same_database(a, make_url(f"sqlite:///{tmp_path}/sub/../x.db"))
    assert not same_database(a, make_url(f"sqlite:///{tmp_path / 'y.db'}"))
    assert not same_database(make_url("sqlite://"), make_url("sqlite://"))  # two memory dbs


async def test_rows_are_written_in_the_transaction_and_marked_processed_once_published(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
    ledger: Outbox,
) -> None:
    with acting_as(7):
        async with sessions.begin() as session:
            session.add(Parcel(id=1, label="fragile"))
            await session.flush()
            # Written, but only on the transaction's own connection: nobody else sees it yet.
            assert await all_rows(ledger) == []
    assert tracker.pending == 1 and publisher.sent == []
    (row,) = await all_rows(ledger)
    assert (row.processed, row.origin, row.attempts, row.last_error) == (
        False,
        Origin.CONTINGENCY.value,
        0,
        None,
    )
    assert row.processed_at is None
    results = await tracker.flush()
    assert publisher.fallback_asked == [False]  # the row is the fallback
    ((message, route),) = publisher.sent
    assert [r.status for r in results] == [PublishStatus.PUBLISHED]
    # Byte for byte what the ledger writes for a message the broker did not take.
    assert row.message_id == message.id == results[0].message_id
    assert row.body == message.body().decode()
    assert json.loads(row.body) == {
        "entity": "App\\Models\\Parcel",
        "id": 1,
        "user": 7,
        "data": {"id": 1, "label": "fragile"},
    }
    assert row.headers == headers_to_json(encode_headers(message))
    assert (row.exchange, row.routing_key, row.queue) == (
        "unit.events",
        "insert",
        "unit.events/insert",
    )
    assert route == Route("unit.events", "insert")
    assert row.message().body() == message.body()
    (done,) = await all_rows(ledger)
    assert done.processed and done.processed_at is not None and done.attempts == 1
    assert tracker.pending == 0


async def test_a_rollback_leaves_no_row_and_publishes_nothing(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
    ledger: Outbox,
) -> None:
    async with sessions() as session:
        session.add(Parcel(id=1, label="ghost"))
        await session.flush()
        await session.rollback()
    with pytest.raises(RuntimeError):
        async with sessions.begin() as session:
            session.add(Parcel(id=2, label="boom"))
            await session.flush()
            raise RuntimeError("the caller failed")
    async with sessions() as session, session.begin():
        session.add(Parcel(id=3, label="before"))
        # (pysqlite only opens a transaction at the first write: a savepoint before it would
        # be a transaction of its own, which RELEASE commits.)
        await session.flush()
        async with session.begin_nested():  # released, then the whole transaction undone
            session.add(Parcel(id=4, label="released"))
        await session.rollback()
    assert tracker.pending == 0
    assert await tracker.flush() == []
    assert publisher.sent == [] and await all_rows(ledger) == []


async def test_a_rolled_back_savepoint_takes_only_its_own_rows_with_it(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
    ledger: Outbox,
) -> None:
    async with sessions.begin() as session:
        session.add(Parcel(id=1, label="kept"))
        await session.flush()
        savepoint = await session.begin_nested()
        session.add(Parcel(id=2, label="discarded"))
        await session.flush()
        await session.execute(delete(Parcel).where(Parcel.id == 1))  # a bulk statement too
        await savepoint.rollback()
        async with session.begin_nested():
            session.add(Parcel(id=3, label="released"))
    await tracker.flush()
    rows = await all_rows(ledger)
    assert [(json.loads(r.body)["id"], r.type, r.processed) for r in rows] == [
        (1, "insert", True),
        (3, "insert", True),
    ]
    assert [m.id for m, _ in publisher.sent] == [r.message_id for r in rows]


async def test_unconfirmed_rows_stay_pending_for_the_relay(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
    ledger: Outbox,
) -> None:
    publisher.status = PublishStatus.FAILED
    async with sessions.begin() as session:
        session.add(Parcel(id=1, label="offline"))
    results = await tracker.flush()  # does not raise: the event is in the outbox
    assert [(r.status, r.error) for r in results] == [(PublishStatus.PERSISTED, "broker down")]
    assert tracker.pending == 0
    (row,) = await ledger.rows(RequeueFilter(origin=Origin.CONTINGENCY))
    assert (row.processed, row.attempts, row.last_error) == (False, 1, "broker down")
    assert row.message_id == results[0].message_id
    publisher.status = PublishStatus.PUBLISHED
    assert await tracker.flush() == []  # not retried from memory: the relay owns it now


@pytest.mark.parametrize("crash", [asyncio.CancelledError(), RuntimeError("process died")])
async def test_a_crash_after_commit_leaves_the_row_pending_behind_a_lease(
    crash: BaseException,
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
    ledger: Outbox,
    database: Database,
) -> None:
    publisher.crash = crash
    async with sessions.begin() as session:
        session.add(Parcel(id=1, label="orphan"))
    with pytest.raises(type(crash)):
        await tracker.flush()
    (row,) = await all_rows(ledger)
    assert not row.processed and row.attempts == 0 and publisher.sent == []
    # Leased to the dead tracker for a while, then anyone's: claim() sees it once it ends.
    async with database.engine.connect() as conn:
        lease = (await conn.execute(text("SELECT claimed_until FROM outbox_messages"))).scalar()
    assert lease is not None
    assert dt.datetime.fromisoformat(str(lease)) > dt.datetime.now(dt.UTC).replace(tzinfo=None)
