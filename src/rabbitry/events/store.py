"""The event store and the module message log, on the SQL database.

Appending is what several workflow workers do at once, so it is built to stay correct under
concurrency: versions are ``max(version) + 1`` per (entity, id), read and written in one
transaction; on PostgreSQL each batch first takes a transaction-scoped advisory lock per
(entity, id), in one global order, so writers of the same entity queue up instead of colliding.
The unique constraints on (entity, entity_id, version) and on the message id are the last word:
a conflict (another worker won the race, or stored the same redelivered message) rolls the
batch back and it is tried again, seeing the winner's rows. So the store never holds a gap, a
duplicate version, or a message twice.

On PostgreSQL a batch is two statements: the advisory locks, then one ``INSERT … SELECT`` that
unpacks the whole batch from one array parameter per column (``unnest``), drops the message ids
stored before, looks up each entity's head version once and numbers the new events from it
(``row_number()`` per entity, in arrival order). SQLite, with one writer at a time, reads the
stored ids and the heads first, then inserts.

A value the database refuses (:class:`Refused`: a data exception, or text the driver cannot
encode) is never retried: :func:`split_refused` splits the batch until only the offending
items are left, so that the others are stored, in their order, and only those are refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from sqlalchemy import Table, select, text
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncSession

from rabbitry.errors import MessageError, StorageError
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
from rabbitry.messaging.envelope import Message
from rabbitry.storage.database import Database

T = TypeVar("T")
R = TypeVar("R")

TRANSIENT_ATTEMPTS = 5
_EVENTS = cast(Table, StoredEvent.__table__)
# Core, not ORM, inserts: the rows are plain dicts and the ORM's bookkeeping would cost more
# than the database's work.
_INSERT_EVENTS = _EVENTS.insert().returning(_EVENTS.c.sequence, sort_by_parameter_order=True)
_INSERT_LOG = cast(Table, MessageLogEntry.__table__).insert()
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
_APPEND_POSTGRESQL = text(
    "WITH batch AS ("
    " SELECT * FROM unnest(CAST(:entity AS varchar[]), CAST(:entity_id AS bigint[]),"
    " CAST(:type AS varchar[]), CAST(:user AS varchar[]), CAST(:data AS text[]),"
    " CAST(:message_id AS varchar[]), CAST(:occurred_at AS timestamptz[]))"
    " WITH ORDINALITY AS t(entity, entity_id, type, usr, data, message_id, occurred_at, n)),"
    " fresh AS (SELECT b.* FROM batch AS b WHERE NOT EXISTS"
    " (SELECT 1 FROM event_store AS e WHERE e.message_id = b.message_id)),"
    " heads AS (SELECT k.entity, k.entity_id, (SELECT max(e.version) FROM event_store AS e"
    " WHERE e.entity = k.entity AND e.entity_id = k.entity_id) AS head"
    " FROM (SELECT DISTINCT entity, entity_id FROM fresh) AS k)"
    " INSERT INTO event_store"
    ' (entity, entity_id, version, type, "user", data, message_id, occurred_at, recorded_at)'
    " SELECT f.entity, f.entity_id, coalesce(h.head, 0)"
    " + row_number() OVER (PARTITION BY f.entity, f.entity_id ORDER BY f.n),"
    " f.type, f.usr, CAST(f.data AS json), f.message_id, f.occurred_at, :recorded_at"
    " FROM fresh AS f JOIN heads AS h ON h.entity = f.entity AND h.entity_id = f.entity_id"
    " ORDER BY f.n"
    " RETURNING sequence, message_id, version"
)
_BEGIN_IMMEDIATE = text("BEGIN IMMEDIATE")
_LOCK = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")


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


class Refused(StorageError):
    """The database refused a value of the batch (not a failure of the database: retrying the
    same batch fails the same way)."""


async def split_refused(
    items: Sequence[T], store: Callable[[Sequence[T]], Awaitable[Sequence[R]]]
) -> list[R | MessageError]:
    """``store(items)``, one result per item; when the database refuses the batch, store each
    half on its own (left first, so arrival order holds), down to the single items it refuses,
    whose result is a :class:`MessageError` with the database's reason.

    A batch with one bad item costs about ``2 * log2(len(items))`` extra transactions. Any
    other :class:`StorageError` (the database is down, a conflict that persists) propagates.
    """
    try:
        return list(await store(items))
    except Refused as exc:
        if len(items) == 1:
            return [MessageError(f"the database refused it: {exc}")]
    middle = len(items) // 2
    left = await split_refused(items[:middle], store)
    return left + await split_refused(items[middle:], store)


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
            return await _with_retry(
                self._db, self._max_attempts, lambda s: _append_postgresql(s, events)
            )
        return await _with_retry(self._db, self._max_attempts, lambda s: self._append(s, events))

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
        return await _with_retry(self._db, self._max_attempts, lambda s: self._append(s, messages))

    async def append_each(self, messages: Sequence[Message]) -> list[MessageError | None]:
        """Log ``messages``; ``None`` for each logged (or logged before), a
        :class:`MessageError` for each the database refused (see :func:`split_refused`)."""

        async def log(part: Sequence[Message]) -> list[None]:
            await self.append(part)
            return [None] * len(part)

        return await split_refused(messages, log)

    async def _append(self, session: AsyncSession, messages: Sequence[Message]) -> int:
        ids = {m.id for m in messages}
        seen = set(
            (
                await session.scalars(
                    select(MessageLogEntry.message_id).where(MessageLogEntry.message_id.in_(ids))
                )
            ).all()
        )
        now = dt.datetime.now(dt.UTC)
        values: list[dict[str, Any]] = []
        for message in messages:
            if message.id in seen:
                continue
            seen.add(message.id)
            values.append(
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
                }
            )
        if values:
            await session.execute(_INSERT_LOG, values)
        return len(values)

    async def recent(self, limit: int = 100) -> list[MessageLogEntry]:
        """The last ``limit`` logged messages, newest first (each with its type, tenant,
        ``exchange``, ``routing_key``, payload, headers and times)."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(MessageLogEntry).order_by(MessageLogEntry.sequence.desc()).limit(limit)
            )
            return list(rows)


async def _with_retry(
    database: Database,
    attempts: int,
    work: Callable[[AsyncSession], Awaitable[T]],
) -> T:
    """Run ``work`` in one transaction, again if needed.

    A unique-constraint conflict means another writer won a race: roll back and run it again
    (it will see the winner's rows). A transient failure (SQLite busy, a dropped connection) is
    retried here a few times too: handing the batch to the broker's retry queue instead would
    let later events of the same entity overtake it.
    """
    transient = 0
    for attempt in range(1, attempts + 1):
        try:
            async with database.sessions.begin() as session:
                if database.is_sqlite:
                    # Take the write lock up front: a read transaction that later writes gets
                    # SQLITE_BUSY at once, without the busy timeout, if another wrote meanwhile.
                    await session.execute(_BEGIN_IMMEDIATE)
                return await work(session)
        except Refused:
            raise
        except UnicodeError as exc:  # a driver that could not encode a text value
            raise Refused(f"{type(exc).__name__}: {exc}") from exc
        except IntegrityError as exc:
            if attempt == attempts:
                raise StorageError(f"still conflicting after {attempts} attempts: {exc}") from exc
            # Jitter, so that two workers that collided do not collide again in lockstep.
            await asyncio.sleep(random.uniform(0, 0.002 * attempt))
        except (OperationalError, OSError) as exc:
            transient += 1
            if transient >= TRANSIENT_ATTEMPTS or attempt == attempts:
                raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(0.05 * 2**transient)
        except SQLAlchemyError as exc:
            if _refused(exc):
                raise Refused(_first_line(exc)) from exc
            raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


def _first_line(exc: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's statement and parameter dump."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


async def _append_postgresql(
    session: AsyncSession, events: Sequence[Incoming]
) -> list[RecordedEvent | None]:
    keys = {(e.change.entity, e.change.id) for e in events}
    await session.execute(_LOCK, {"keys": sorted({_lock_key(k) for k in keys})})
    fresh: dict[str, Incoming] = {}
    for event in events:
        fresh.setdefault(event.message_id, event)  # a repeat within the batch: first one wins
    batch = list(fresh.values())
    try:
        data = [
            None
            if e.change.data is None
            else json.dumps(dict(e.change.data), ensure_ascii=False, allow_nan=False)
            for e in batch
        ]
    except (TypeError, ValueError) as exc:
        raise Refused(f"'data' is not JSON: {exc}") from exc
    recorded_at = dt.datetime.now(dt.UTC)
    params = {
        "entity": [e.change.entity for e in batch],
        "entity_id": [e.change.id for e in batch],
        "type": [str(e.change.type) for e in batch],
        "user": [str(e.change.user) for e in batch],
        "data": data,
        "message_id": [e.message_id for e in batch],
        "occurred_at": [e.occurred_at for e in batch],
        "recorded_at": recorded_at,
    }
    stored = {
        message_id: (sequence, version)
        for sequence, message_id, version in await session.execute(_APPEND_POSTGRESQL, params)
    }
    results: list[RecordedEvent | None] = []
    for event in events:
        found = stored.pop(event.message_id, None)  # popped: a repeat in the batch gets None
        if found is None:
            results.append(None)
            continue
        change = event.change
        results.append(
            RecordedEvent(
                sequence=found[0],
                entity=change.entity,
                id=change.id,
                version=found[1],
                type=change.type,
                user=change.user,
                data=change.data,
                message_id=event.message_id,
                occurred_at=event.occurred_at,
                recorded_at=recorded_at,
            )
        )
    return results


def _refused(exc: BaseException) -> bool:
    """Whether the database (or its driver) refused a value, rather than failed."""
    if isinstance(exc, DataError | UnicodeError):
        return True
    if isinstance(exc, StatementError) and isinstance(exc.orig, UnicodeError | ValueError):
        return True  # a bind parameter that could not be converted
    if isinstance(exc, DBAPIError):
        # SQLSTATE class 22 is "data exception" (bad text, bad JSON, out of range), 54 is
        # "program limit exceeded" (a value too large for an index row).
        state = getattr(exc.orig, "sqlstate", None) or ""
        return str(state)[:2] in ("22", "54")
    return False


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
