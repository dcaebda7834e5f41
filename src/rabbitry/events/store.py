"""The event store and the module message log, on the SQL database.

Appending is what several workflow workers do at once, so it is built to stay correct under
concurrency: versions are ``max(version) + 1`` per (entity, id), read and written in one
transaction; on PostgreSQL each batch first takes a transaction-scoped advisory lock per
(entity, id), in one global order, so writers of the same entity queue up instead of colliding.
The unique constraints on (entity, entity_id, version) and on the message id are the last word:
a conflict (another worker won the race, or stored the same redelivered message) rolls the
batch back and it is tried again, seeing the winner's rows. So the store never holds a gap, a
duplicate version, or a message twice.

On PostgreSQL a batch is three statements on the driver's own connection: the advisory locks;
one lookup of each entity's head version and of the message ids stored before; one
``INSERT … SELECT`` from one array parameter per column (``unnest``) of the new events, numbered
in arrival order from their heads. SQLite, with one writer at a time, does the same reads and
the insert through SQLAlchemy.

Conflicts and transient failures are run again, a value the database refuses is not
(:mod:`rabbitry.events.writes`): :meth:`EventStore.append_each` splits the batch until only the
offending events are left, so that the others are stored, in their order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from sqlalchemy import Table, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from rabbitry.errors import MessageError
from rabbitry.events.change import (
    ChangeEvent,
    ChangeType,
    EntityState,
    RecordedEvent,
    fold,
    user_from_text,
)
from rabbitry.events.models import MessageLogEntry, StoredEvent
from rabbitry.events.portable import check_text
from rabbitry.events.writes import Refused, classify, split_refused, with_retry
from rabbitry.messaging.envelope import Message
from rabbitry.storage.database import Database

T = TypeVar("T")

_EVENTS = cast(Table, StoredEvent.__table__)
# Core, not ORM, inserts: the rows are plain dicts and the ORM's bookkeeping would cost more
# than the database's work.
_INSERT_EVENTS = _EVENTS.insert().returning(_EVENTS.c.sequence, sort_by_parameter_order=True)
_LOG = cast(Table, MessageLogEntry.__table__)
# SQLite: the head version of each (entity, id) of a batch in one round trip, the keys passed
# as one JSON parameter. Each max() is answered from the end of the unique index (the min/max
# optimisation), so the cost does not grow with the entities' histories.
_HEADS_SQLITE = text(
    "SELECT (SELECT max(e.version) FROM event_store AS e"
    " WHERE e.entity = json_extract(k.value, '$[0]')"
    " AND e.entity_id = json_extract(k.value, '$[1]'))"
    " FROM json_each(:keys) AS k ORDER BY k.key"
)
# The whole PostgreSQL append after the locks: one round trip, one plan, whatever the batch.
# The statement snapshot is taken after the locks were granted (a separate, earlier
# statement), so the heads it reads include every event committed by a writer it waited for.
# PostgreSQL, once the batch's locks are held: the head version of each (entity, id) (kind 0),
# and the message ids stored before (kind 1), in one round trip; each max() is answered from
# the end of the unique index, so the cost does not grow with the entities' histories, nor
# with the table.
_LOOKUP_POSTGRESQL = (
    "SELECT 0, k.entity, k.entity_id, (SELECT max(e.version) FROM event_store AS e"
    " WHERE e.entity = k.entity AND e.entity_id = k.entity_id)"
    " FROM unnest($1::varchar[], $2::bigint[]) AS k(entity, entity_id)"
    # A scalar subquery per id, like max() above: always one probe of the unique index,
    # never a scan that the planner may choose from stale statistics (= ANY(...) did).
    " UNION ALL SELECT 1, u.m, NULL, NULL FROM unnest($3::varchar[]) AS u(m)"
    " WHERE (SELECT true FROM event_store AS e WHERE e.message_id = u.m)"
)
# ... then the new events, numbered here, in one INSERT from one array per column. Measured
# twice as fast as numbering them in SQL (row_number() over a sort, in one statement).
_INSERT_POSTGRESQL = (
    "INSERT INTO event_store"
    ' (entity, entity_id, version, type, "user", data, message_id, occurred_at, recorded_at)'
    " SELECT e, i, v, t, u, CAST(d AS json), m, o, $9 FROM unnest($1::varchar[], $2::bigint[],"
    " $3::int[], $4::varchar[], $5::varchar[], $6::text[], $7::varchar[], $8::timestamptz[])"
    " WITH ORDINALITY AS x(e, i, v, t, u, d, m, o, n) ORDER BY n RETURNING message_id, sequence"
)
_BEGIN_IMMEDIATE = text("BEGIN IMMEDIATE")


MAX_MESSAGE_ID_LENGTH = 255


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated change event with the message it came in: its id and timestamp."""

    change: ChangeEvent
    message_id: str
    occurred_at: dt.datetime

    def __post_init__(self) -> None:
        check_message_id(self.message_id)


def check_message_id(message_id: str) -> None:
    """Raise :class:`MessageError` for an id the store cannot keep (it is what dedups)."""
    if not message_id or len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise MessageError(
            f"message id (rr_id or message_id) must be 1-{MAX_MESSAGE_ID_LENGTH} characters"
        )
    check_text(message_id, "message id (rr_id or message_id)")


class EventStore:
    """Append change events; read an entity's history or its state at a time."""

    def __init__(self, database: Database, *, max_attempts: int = 30) -> None:
        self._db = database
        self._max_attempts = max_attempts

    async def append(self, events: Sequence[Incoming]) -> list[RecordedEvent | None]:
        """Store ``events`` in order; one result each: the stored event, or ``None`` when the
        message was stored before (a redelivery, or a repeat within ``events``).

        Raises :class:`StorageError` if the database fails or conflicts persist.
        """
        if not events:
            return []
        if self._db.engine.dialect.name == "postgresql":
            return await with_retry(
                self._max_attempts, lambda: _append_postgresql(self._db, events)
            )
        return await with_retry(
            self._max_attempts, lambda: _in_session(self._db, lambda s: self._append(s, events))
        )

    async def append_each(
        self, events: Sequence[Incoming]
    ) -> list[RecordedEvent | MessageError | None]:
        """Like :meth:`append`, but an event the database refuses gets a
        :class:`MessageError` as its result instead of failing the others (see
        :func:`split_refused`); the others are stored in their order."""
        return await split_refused(events, self.append)

    async def _append(
        self, session: AsyncSession, events: Sequence[Incoming]
    ) -> list[RecordedEvent | None]:
        keys = sorted({(e.change.entity, e.change.id) for e in events})
        ids = {e.message_id for e in events}
        seen = set(
            (
                await session.scalars(
                    select(StoredEvent.message_id).where(StoredEvent.message_id.in_(ids))
                )
            ).all()
        )
        heads = await session.execute(_HEADS_SQLITE, {"keys": json.dumps(keys)})
        versions = {key: head or 0 for key, (head,) in zip(keys, heads, strict=True)}
        recorded_at = dt.datetime.now(dt.UTC)
        results: list[RecordedEvent | None] = []
        values: list[dict[str, Any]] = []
        for event in events:
            if event.message_id in seen:
                results.append(None)
                continue
            seen.add(event.message_id)
            key = (event.change.entity, event.change.id)
            versions[key] = version = versions.get(key, 0) + 1
            change = event.change
            values.append(
                {
                    "entity": change.entity,
                    "entity_id": change.id,
                    "version": version,
                    "type": str(change.type),
                    "user": str(change.user),
                    "data": None if change.data is None else dict(change.data),
                    "message_id": event.message_id,
                    "occurred_at": event.occurred_at,
                    "recorded_at": recorded_at,
                }
            )
            results.append(_recorded(0, values[-1]))
        if not values:
            return results
        sequences = (await session.scalars(_INSERT_EVENTS, values)).all()
        numbered = iter(sequences)
        return [None if r is None else _with_sequence(r, next(numbered)) for r in results]

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


class MessageLog:
    """What the workflow module heard on the modules exchange, each message once, with the
    exchange and routing key the broker delivered it with."""

    def __init__(self, database: Database, *, max_attempts: int = 30) -> None:
        self._db = database
        self._max_attempts = max_attempts

    async def append(self, messages: Sequence[Message]) -> int:
        """Log ``messages``; returns how many were new."""
        if not messages:
            return 0
        return await with_retry(
            self._max_attempts, lambda: _in_session(self._db, lambda s: self._append(s, messages))
        )

    async def append_each(self, messages: Sequence[Message]) -> list[MessageError | None]:
        """Log ``messages``; ``None`` for each logged (or logged before), a
        :class:`MessageError` for each the database refused (see :func:`split_refused`)."""

        async def log(part: Sequence[Message]) -> list[None]:
            await self.append(part)
            return [None] * len(part)

        return await split_refused(messages, log)

    async def _append(self, session: AsyncSession, messages: Sequence[Message]) -> int:
        now = dt.datetime.now(dt.UTC)
        values: dict[str, dict[str, Any]] = {}
        for message in messages:
            values.setdefault(  # a repeat within the batch: the first one
                message.id,
                {
                    "message_id": message.id,
                    "type": message.type[:255],
                    "tenant": message.tenant,
                    "exchange": message.exchange,
                    "routing_key": message.routing_key,
                    "payload": message.payload,
                    "headers": {k: list(v) for k, v in message.headers.items()},
                    "occurred_at": message.timestamp,
                    "recorded_at": now,
                },
            )
        # No version to number here: the unique index itself drops a message logged before
        # (no lookup first, which PostgreSQL may plan as a scan of the whole log).
        insert = sqlite_insert if self._db.is_sqlite else postgresql_insert
        statement = (
            insert(_LOG)
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(_LOG.c.message_id)
        )
        return len((await session.execute(statement, list(values.values()))).all())

    async def recent(self, limit: int = 100) -> list[MessageLogEntry]:
        """The last ``limit`` logged messages, newest first (each with its type, tenant,
        ``exchange``, ``routing_key``, payload, headers and times)."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(MessageLogEntry).order_by(MessageLogEntry.sequence.desc()).limit(limit)
            )
            return list(rows)


async def _in_session(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in one ORM session's transaction."""
    async with database.sessions.begin() as session:
        if database.is_sqlite:
            # Take the write lock up front: a read transaction that later writes gets
            # SQLITE_BUSY at once, without the busy timeout, if another wrote meanwhile.
            await session.execute(_BEGIN_IMMEDIATE)
        return await work(session)


async def _append_postgresql(
    database: Database, events: Sequence[Incoming]
) -> list[RecordedEvent | None]:
    """One batch on PostgreSQL, on the driver's own connection (checked out of the engine's
    pool): four round trips (BEGIN with the locks, the lookup, the insert, COMMIT), a third of
    the time the same work takes through an ORM session."""
    keys = sorted({(e.change.entity, e.change.id) for e in events})
    # BEGIN and the locks in one round trip (a simple query may hold several statements; the
    # lock keys are integers computed here, so the text holds nothing from the messages).
    # Each round trip also waits for the event loop's turn, busy with the consumer.
    lock_keys = ",".join(str(key) for key in sorted({_lock_key(k) for k in keys}))
    begin = f"BEGIN; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{lock_keys}}}'::bigint[]) t(k)"
    async with database.engine.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection  # asyncpg's
        try:
            await driver.execute(begin)
            try:
                found = await driver.fetch(
                    _LOOKUP_POSTGRESQL,
                    [entity for entity, _ in keys],
                    [entity_id for _, entity_id in keys],
                    list({e.message_id for e in events}),
                )
                heads = {(r[1], r[2]): r[3] or 0 for r in found if r[0] == 0}
                seen = {r[1] for r in found if r[0] == 1}
                recorded_at = dt.datetime.now(dt.UTC)
                results = _numbered(events, heads, seen, recorded_at)
                stored = [r for r in results if r is not None]
                sequences = []
                if stored:
                    sequences = await driver.fetch(
                        _INSERT_POSTGRESQL, *_columns(stored), recorded_at
                    )
            except BaseException:
                if not driver.is_closed():
                    with contextlib.suppress(Exception):  # the first error is the one to tell
                        await driver.execute("ROLLBACK")
                raise
            await driver.execute("COMMIT")
        except Exception as exc:
            if classify(exc) == "transient":
                await conn.invalidate()  # a dead connection must not go back to the pool
            raise
    numbered = {row[0]: row[1] for row in sequences}  # RETURNING promises no order
    for event in stored:
        # Ours alone until returned: filling in the field is cheaper than replace() per event.
        object.__setattr__(event, "sequence", numbered[event.message_id])
    return results


def _numbered(
    events: Sequence[Incoming],
    heads: dict[tuple[str, int], int],
    seen: set[str],
    recorded_at: dt.datetime,
) -> list[RecordedEvent | None]:
    """The events to store, numbered from their entity's head version in arrival order;
    ``None`` for a message stored before, or repeated within ``events``."""
    seen = set(seen)
    results: list[RecordedEvent | None] = []
    for event in events:
        if event.message_id in seen:
            results.append(None)
            continue
        seen.add(event.message_id)
        change = event.change
        key = (change.entity, change.id)
        heads[key] = version = heads.get(key, 0) + 1
        results.append(
            RecordedEvent(
                sequence=0,
                entity=change.entity,
                id=change.id,
                version=version,
                type=change.type,
                user=change.user,
                data=change.data,
                message_id=event.message_id,
                occurred_at=event.occurred_at,
                recorded_at=recorded_at,
            )
        )
    return results


def _columns(stored: Sequence[RecordedEvent]) -> tuple[list[Any], ...]:
    """One array per column of the INSERT (entity, id, version, type, user, data, id, time)."""
    try:
        data = [
            None
            if e.data is None
            else json.dumps(dict(e.data), ensure_ascii=False, allow_nan=False)
            for e in stored
        ]
    except (TypeError, ValueError) as exc:
        raise Refused(f"'data' is not JSON: {exc}") from exc
    return (
        [e.entity for e in stored],
        [e.id for e in stored],
        [e.version for e in stored],
        [str(e.type) for e in stored],
        [str(e.user) for e in stored],
        data,
        [e.message_id for e in stored],
        [e.occurred_at for e in stored],
    )


def _lock_key(key: tuple[str, int]) -> int:
    """A stable signed 64-bit key per (entity, id) for pg_advisory_xact_lock; a collision only
    makes two entities share a lock."""
    digest = hashlib.blake2b(f"{key[0]}\x00{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _recorded(sequence: int, row: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        sequence=sequence,
        entity=row["entity"],
        id=row["entity_id"],
        version=row["version"],
        type=ChangeType(row["type"]),
        user=user_from_text(row["user"]),
        data=row["data"],
        message_id=row["message_id"],
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
    )


def _with_sequence(event: RecordedEvent, sequence: int) -> RecordedEvent:
    return replace(event, sequence=sequence)


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
