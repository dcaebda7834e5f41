"""The SQLAlchemy integration: which change events a committed transaction emits.

The publisher here only records what it is handed (no broker); the integration tests publish
for real. The database is a local SQLite file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, String, delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from helpers import RecordingPublisher
from rabbitry.config import Settings
from rabbitry.errors import PublishFailed
from rabbitry.events.emitter import Emitter, acting_as
from rabbitry.events.orm import ChangeTracker
from rabbitry.messaging.publisher import PublishStatus


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    credit: Mapped[decimal.Decimal] = mapped_column(default=decimal.Decimal("0"))
    since: Mapped[dt.date | None] = mapped_column(default=None)


class Invoice(Base):
    __tablename__ = "invoices"
    __rabbitry_entity__ = "App\\Models\\Invoice"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    total: Mapped[int]
    paid: Mapped[bool] = mapped_column(default=False)


class Setting(Base):  # a string primary key: no change events
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(20), primary_key=True)
    value: Mapped[str] = mapped_column(String(20))


CUSTOMER = f"{__name__}.Customer"
INVOICE = "App\\Models\\Invoice"


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def tracker(publisher: RecordingPublisher) -> AsyncIterator[ChangeTracker]:
    tracker = ChangeTracker(Emitter(publisher, Settings(namespace="unit")))
    yield tracker
    publisher.status = PublishStatus.PUBLISHED
    await tracker.aclose()


@pytest.fixture
async def sessions(
    tmp_path: Path, tracker: ChangeTracker
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield async_sessionmaker(
        engine, sync_session_class=tracker.session_class, expire_on_commit=False
    )
    await engine.dispose()


async def test_insert_update_delete_are_emitted_after_commit_with_the_acting_user(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    with acting_as(42):
        async with sessions.begin() as session:
            ada = Customer(name="Ada", credit=decimal.Decimal("1.50"), since=dt.date(2025, 2, 6))
            session.add(ada)
            await session.flush()
            assert publisher.sent == [] and tracker.pending == 0  # not before commit
        await tracker.flush()
    assert publisher.events() == [
        (
            "insert",
            {
                "entity": CUSTOMER,
                "id": ada.id,
                "user": 42,
                "data": {"id": ada.id, "name": "Ada", "credit": "1.50", "since": "2025-02-06"},
            },
        )
    ]
    async with sessions.begin() as session:  # no acting user: "system"
        ada = await session.get_one(Customer, ada.id)
        ada.name = "Ada L."
        ada.credit = ada.credit  # assigned but unchanged: not reported
    async with sessions.begin() as session:
        await session.delete(await session.get_one(Customer, ada.id))
    await tracker.flush()
    assert publisher.events()[1:] == [
        (
            "update",
            {"entity": CUSTOMER, "id": ada.id, "user": "system", "data": {"name": "Ada L."}},
        ),
        ("delete", {"entity": CUSTOMER, "id": ada.id, "user": "system"}),
    ]
    message, route = publisher.sent[0]
    assert (route.exchange, route.routing_key) == ("unit.events", "insert")
    assert message.type == "insert" and message.pipeline == "event-sourcing"


async def test_a_rolled_back_transaction_emits_nothing(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions() as session:
        session.add(Customer(name="Ghost"))
        await session.flush()
        await session.rollback()
    with pytest.raises(RuntimeError):
        async with sessions.begin() as session:
            session.add(Customer(name="Boom"))
            await session.flush()
            raise RuntimeError("the caller failed")
    await tracker.flush()
    assert publisher.sent == []


async def test_a_rolled_back_savepoint_discards_only_its_own_changes(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions.begin() as session:
        session.add(Customer(id=1, name="kept"))
        await session.flush()
        savepoint = await session.begin_nested()
        session.add(Customer(id=2, name="discarded"))
        await session.flush()
        await savepoint.rollback()
        async with session.begin_nested():
            session.add(Customer(id=3, name="released"))
    await tracker.flush()
    assert [(kind, body["id"]) for kind, body in publisher.events()] == [
        ("insert", 1),
        ("insert", 3),
    ]


async def test_a_released_savepoint_of_a_rolled_back_transaction_emits_nothing(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions() as session, session.begin():
        session.add(Customer(id=1, name="first"))
        await session.flush()
        async with session.begin_nested():  # RELEASE SAVEPOINT is not the commit
            session.add(Customer(id=2, name="released"))
        assert tracker.pending == 0
        await session.rollback()
    await tracker.flush()
    assert publisher.sent == []


async def test_bulk_update_and_delete_statements_emit_an_event_per_affected_row(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions.begin() as session:
        session.add(Customer(id=1, name="c"))
        session.add_all([Invoice(id=i, customer_id=1, total=i * 100) for i in range(1, 6)])
    await tracker.flush()
    publisher.sent.clear()
    with acting_as(7):
        async with sessions.begin() as session:
            await session.execute(update(Invoice).where(Invoice.total >= 300).values(paid=True))
            # Rows 3-5 are already paid: only the total changes for them; 1 and 2 untouched.
            await session.execute(
                update(Invoice).where(Invoice.total >= 200).values(paid=True, total=999)
            )
            await session.execute(delete(Invoice).where(Invoice.id == 1))
        await tracker.flush()
    assert publisher.events() == [
        ("update", {"entity": INVOICE, "id": i, "user": 7, "data": {"paid": True}})
        for i in (3, 4, 5)
    ] + [
        ("update", {"entity": INVOICE, "id": 2, "user": 7, "data": {"total": 999, "paid": True}}),
        *[
            ("update", {"entity": INVOICE, "id": i, "user": 7, "data": {"total": 999}})
            for i in (3, 4, 5)
        ],
        ("delete", {"entity": INVOICE, "id": 1, "user": 7}),
    ]


async def test_bulk_update_by_primary_key_emits_the_changed_values(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions.begin() as session:
        session.add_all([Customer(id=1, name="a"), Customer(id=2, name="b")])
    await tracker.flush()
    publisher.sent.clear()
    async with sessions.begin() as session:
        await session.execute(update(Customer), [{"id": 1, "name": "a"}, {"id": 2, "name": "B"}])
    await tracker.flush()
    assert publisher.events() == [
        ("update", {"entity": CUSTOMER, "id": 2, "user": "system", "data": {"name": "B"}})
    ]


async def test_a_rolled_back_bulk_statement_emits_nothing(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions.begin() as session:
        session.add(Customer(id=1, name="a"))
    await tracker.flush()
    publisher.sent.clear()
    async with sessions() as session:
        await session.execute(delete(Customer))
        await session.rollback()
    await tracker.flush()
    assert publisher.sent == []


async def test_tables_without_an_integer_key_are_not_tracked(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions.begin() as session:
        session.add(Setting(key="k", value="v"))
    await tracker.flush()
    assert publisher.sent == []


async def test_failed_publishes_stay_pending_until_a_later_flush(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    publisher.status = PublishStatus.FAILED
    async with sessions.begin() as session:
        session.add(Customer(id=1, name="a"))
    with pytest.raises(PublishFailed, match="broker down"):
        await tracker.flush()
    assert tracker.pending == 1
    publisher.status = PublishStatus.PUBLISHED
    await tracker.flush()
    assert tracker.pending == 0
    assert [kind for kind, _ in publisher.events()] == ["insert"]


async def test_events_are_published_in_the_background_after_commit(
    sessions: async_sessionmaker[AsyncSession],
    tracker: ChangeTracker,
    publisher: RecordingPublisher,
) -> None:
    async with sessions.begin() as session:
        session.add(Customer(id=1, name="a"))
    for _ in range(100):
        if publisher.sent:
            break
        await asyncio.sleep(0.01)
    assert [kind for kind, _ in publisher.events()] == ["insert"]
    await tracker.aclose()


async def test_only_the_listed_entities_are_tracked(
    tmp_path: Path, publisher: RecordingPublisher
) -> None:
    tracker = ChangeTracker(Emitter(publisher, Settings(namespace="unit")), entities=[Invoice])
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'only.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, sync_session_class=tracker.session_class)
    async with sessions.begin() as session:
        session.add(Customer(id=1, name="a"))
        await session.flush()
        session.add(Invoice(id=1, customer_id=1, total=5))
    await tracker.aclose()
    await engine.dispose()
    assert [(body["entity"], body["id"]) for _, body in publisher.events()] == [(INVOICE, 1)]
