"""The event store, on the SQL database (the module message log is :mod:`.message_log`).

Appending is what several workflow workers do at once, so it is built to stay correct under
concurrency: versions are ``max(version) + 1`` per (entity, id), read and written in one
transaction; on PostgreSQL each batch first takes a transaction-scoped advisory lock per
(entity, id), in one global order, so writers of the same entity queue up instead of colliding.
The unique constraints on (entity, entity_id, version) and on the message id are the last word:
a conflict (another worker won the race, or stored the same redelivered message) rolls the
batch back and it is tried again, seeing the winner's rows. So the store never holds a gap, a
duplicate version, or a message twice.

Each dialect has its writer, in a module of its own: on PostgreSQL
(:mod:`rabbitry.events.postgresql_writer`) a batch is one call of a function on the driver's
own connection (a transaction of four round trips when it holds a redelivery); SQLite
(:mod:`rabbitry.events.sqlite_writer`), with one writer at a time, does the same reads and the
insert through SQLAlchemy.

Conflicts and transient failures are run again, a value the database refuses is not
(:mod:`rabbitry.events.writes`): :meth:`EventStore.append_each` splits the batch until only the
offending events are left, so that the others are stored, in their order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select

from rabbitry.errors import MessageError
from rabbitry.events.change import ChangeType, EntityState, RecordedEvent, fold, user_from_text
from rabbitry.events.incoming import (
    MAX_MESSAGE_ID_LENGTH,
    Incoming,
    Row,
    check_message_id,
    incoming_of,
)
from rabbitry.events.models import StoredEvent
from rabbitry.events.postgresql_writer import Heads, append_postgresql, append_rows_postgresql
from rabbitry.events.sqlite_writer import append_sqlite
from rabbitry.events.writes import in_session, split_refused, with_retry
from rabbitry.storage.database import Database

__all__ = ["MAX_MESSAGE_ID_LENGTH", "EventStore", "Incoming", "Row", "check_message_id"]


class EventStore:
    """Append change events; read an entity's history or its state at a time."""

    def __init__(self, database: Database, *, max_attempts: int = 30) -> None:
        self._db = database
        self._max_attempts = max_attempts
        # The heads its own appends of rows left, read no more (PostgreSQL, see Heads).
        self._heads = Heads()

    async def append(self, events: Sequence[Incoming]) -> list[RecordedEvent | None]:
        """Store ``events`` in order; one result each: the stored event, or ``None`` when the
        message was stored before (a redelivery, or a repeat within ``events``).

        Raises :class:`StorageError` if the database fails or conflicts persist.
        """
        if not events:
            return []
        if self._db.engine.dialect.name == "postgresql":
            return await with_retry(self._max_attempts, lambda: append_postgresql(self._db, events))
        return await with_retry(
            self._max_attempts, lambda: in_session(self._db, lambda s: append_sqlite(s, events))
        )

    async def append_each(
        self, events: Sequence[Incoming]
    ) -> list[RecordedEvent | MessageError | None]:
        """Like :meth:`append`, but an event the database refuses gets a
        :class:`MessageError` as its result instead of failing the others (see
        :func:`split_refused`); the others are stored in their order."""
        return await split_refused(events, self.append)

    async def append_rows(self, rows: Sequence[Row]) -> list[None]:
        """Like :meth:`append`, for rows built straight from the bodies
        (:func:`~rabbitry.events.incoming.parse_row`), with no model per event: the same
        order, dedupe and retries; one ``None`` per row (stored, or stored before)."""
        if not rows:
            return []
        if self._db.engine.dialect.name == "postgresql":
            return await with_retry(
                self._max_attempts, lambda: append_rows_postgresql(self._db, rows, self._heads)
            )
        events = [incoming_of(row) for row in rows]  # SQLite writes models, one at a time
        await self.append(events)
        return [None] * len(rows)

    async def append_rows_each(self, rows: Sequence[Row]) -> list[MessageError | None]:
        """:meth:`append_rows`, with a row the database refuses split out as in
        :meth:`append_each`."""
        return await split_refused(rows, self.append_rows)

    async def history(self, entity: str, entity_id: int) -> list[RecordedEvent]:
        """Every event of one entity, oldest (version 1) first."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(StoredEvent)
                .where(StoredEvent.entity == entity, StoredEvent.entity_id == entity_id)
                .order_by(StoredEvent.version)
            )
            return [_from_row(row) for row in rows]

    async def state(
        self, entity: str, entity_id: int, at: dt.datetime | None = None
    ) -> EntityState | None:
        """The entity rebuilt from the events that occurred at or before ``at`` (default:
        all of them); ``None`` when there are none."""
        query = select(
            StoredEvent.sequence,
            StoredEvent.version,
            StoredEvent.type,
            StoredEvent.user,
            StoredEvent.data,
            StoredEvent.message_id,
            StoredEvent.occurred_at,
            StoredEvent.recorded_at,
        ).where(StoredEvent.entity == entity, StoredEvent.entity_id == entity_id)
        if at is not None:
            query = query.where(StoredEvent.occurred_at <= at)
        async with self._db.session() as session:
            rows = (await session.execute(query.order_by(StoredEvent.version))).all()
        if not rows:
            return None
        events = (
            RecordedEvent(
                sequence=seq,
                entity=entity,
                id=entity_id,
                version=version,
                type=ChangeType(kind),
                user=user_from_text(user),
                data=data,
                message_id=message_id,
                occurred_at=occurred,
                recorded_at=recorded,
            )
            for seq, version, kind, user, data, message_id, occurred, recorded in rows
        )
        return fold(events, EntityState(entity=entity, id=entity_id))


def _from_row(row: StoredEvent) -> RecordedEvent:
    return RecordedEvent(
        sequence=row.sequence,
        entity=row.entity,
        id=row.entity_id,
        version=row.version,
        type=ChangeType(row.type),
        user=user_from_text(row.user),
        data=row.data,
        message_id=row.message_id,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
    )
