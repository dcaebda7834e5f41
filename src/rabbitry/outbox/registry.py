"""The queue registry: which queues users and the requeue command know by name.

The source of truth is ``rabbitry.yaml`` (``queues:``); :func:`sync` copies it into the
database, where the back-office and :mod:`rabbitry.outbox.manual` read it. Syncing is an upsert
by name; an entry removed from the file is marked inactive rather than deleted, so the history
of messages sent to it keeps its description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from rabbitry.config import RegistryEntry
from rabbitry.outbox.models import QueueRecord
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

_FIELDS = (
    "description",
    "allow_manual_insertion",
    "classname",
    "exchange",
    "routing_key",
    "message_type",
    "payload",
)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A registry entry as stored."""

    name: str
    description: str
    allow_manual_insertion: bool
    classname: str
    exchange: str
    routing_key: str
    active: bool
    message_type: str = ""
    payload: str = "record"

    @classmethod
    def of(cls, record: QueueRecord) -> QueueInfo:
        return cls(
            name=record.name,
            description=record.description,
            allow_manual_insertion=record.allow_manual_insertion,
            classname=record.classname,
            exchange=record.exchange,
            routing_key=record.routing_key,
            active=record.active,
            message_type=record.message_type,
            payload=record.payload,
        )


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What :func:`sync` changed, by queue name."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deactivated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def summary(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.deactivated)} deactivated, {len(self.unchanged)} unchanged"
        )


async def sync(db: Database, entries: Sequence[RegistryEntry]) -> SyncReport:
    """Make the stored registry match ``entries`` (in one transaction)."""
    wanted = {entry.name: entry for entry in entries}
    if len(wanted) != len(entries):
        names = [entry.name for entry in entries]
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"queue listed more than once: {', '.join(twice)}")
    created: list[str] = []
    updated: list[str] = []
    deactivated: list[str] = []
    unchanged: list[str] = []
    now = utcnow()
    async with db.session() as session:
        records = {r.name: r for r in (await session.scalars(select(QueueRecord))).all()}
        for name, entry in wanted.items():
            record = records.get(name)
            if record is None:
                session.add(
                    QueueRecord(
                        name=name,
                        **{f: getattr(entry, f) for f in _FIELDS},
                        active=True,
                        created_at=now,
                        updated_at=now,
                    )
                )
                created.append(name)
                continue
            changed = not record.active
            for field in _FIELDS:
                if getattr(record, field) != getattr(entry, field):
                    setattr(record, field, getattr(entry, field))
                    changed = True
            if changed:
                record.active = True
                record.updated_at = now
                updated.append(name)
            else:
                unchanged.append(name)
        for name, record in records.items():
            if name not in wanted and record.active:
                record.active = False
                record.updated_at = now
                deactivated.append(name)
    return SyncReport(tuple(created), tuple(updated), tuple(deactivated), tuple(unchanged))


async def list_queues(db: Database, *, include_inactive: bool = True) -> list[QueueInfo]:
    """Every registry entry, by name."""
    statement = select(QueueRecord).order_by(QueueRecord.name)
    if not include_inactive:
        statement = statement.where(QueueRecord.active.is_(True))
    async with db.session() as session:
        return [QueueInfo.of(r) for r in (await session.scalars(statement)).all()]


async def get_queue(db: Database, name: str) -> QueueInfo | None:
    async with db.session() as session:
        record = await session.scalar(select(QueueRecord).where(QueueRecord.name == name))
        return QueueInfo.of(record) if record is not None else None


async def manual_queues(db: Database, classname: str) -> list[QueueInfo]:
    """The active queues a user may send an entity of ``classname`` to by hand (the ▶ modal)."""
    statement = (
        select(QueueRecord)
        .where(
            QueueRecord.classname == classname,
            QueueRecord.active.is_(True),
            QueueRecord.allow_manual_insertion.is_(True),
        )
        .order_by(QueueRecord.name)
    )
    async with db.session() as session:
        return [QueueInfo.of(r) for r in (await session.scalars(statement)).all()]
