"""``ChangeTracker.install()`` on what an application already has: one plain ``AsyncSession``,
a plain sync ``Session``, a ``sessionmaker``. Only what it was installed on emits events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import String, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from helpers import RecordingPublisher
from rabbitry.config import Settings
from rabbitry.events.emitter import Emitter
from rabbitry.events.orm import ChangeTracker


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


NOTE = f"{__name__}.Note"


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def tracker(publisher: RecordingPublisher) -> AsyncIterator[ChangeTracker]:
    tracker = ChangeTracker(Emitter(publisher, Settings(namespace="unit")))
    yield tracker
    await tracker.aclose()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


async def test_installed_on_one_plain_async_session_it_reports_that_session_only(
    engine: AsyncEngine, tracker: ChangeTracker, publisher: RecordingPublisher
) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as tracked:
        tracker.install(tracked)
        async with tracked.begin():
            mine = Note(text="tracked")
            tracked.add(mine)
    async with AsyncSession(engine) as other, other.begin():  # never installed on
        other.add(Note(text="not tracked"))
    await tracker.flush()

    assert publisher.events() == [
        (
            "insert",
            {
                "entity": NOTE,
                "id": mine.id,
                "user": "system",
                "data": {"id": mine.id, "text": "tracked"},
            },
        )
    ]


async def test_installed_on_a_plain_sync_sessionmaker_every_session_it_makes_reports(
    tmp_path: Path, tracker: ChangeTracker, publisher: RecordingPublisher
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    tracker.install(factory)
    try:
        with factory.begin() as session:
            note = Note(text="one")
            session.add(note)
        with factory.begin() as session:
            session.get_one(Note, note.id).text = "two"
        with Session(engine) as plain, plain.begin():  # not made by the factory
            plain.add(Note(text="untracked"))
    finally:
        engine.dispose()
    await tracker.flush()

    assert [(kind, body["id"], body.get("data")) for kind, body in publisher.events()] == [
        ("insert", note.id, {"id": note.id, "text": "one"}),
        ("update", note.id, {"text": "two"}),
    ]
