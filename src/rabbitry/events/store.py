"""The event store and the module message log, on the SQL database.

Appending is what several workflow workers do at once, so it is built to stay correct under
concurrency: versions are ``max(version) + 1`` per (entity, id), read and written in one
transaction; on PostgreSQL each batch first takes a transaction-scoped advisory lock per
(entity, id), in one global order, so writers of the same entity queue up instead of colliding.
The unique constraints on (entity, entity_id, version) and on the message id are the last word:
a conflict (another worker won the race, or stored the same redelivered message) rolls the
batch back and it is tried again, seeing the winner's rows. So the store never holds a gap, a
duplicate version, or a message twice.
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
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
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
from rabbitry.messaging.envelope import Message
from rabbitry.storage.database import Database

T = TypeVar("T")

TRANSIENT_ATTEMPTS = 5
_EVENTS = cast(Table, StoredEvent.__table__)
# Core, not ORM, inserts: the rows are plain dicts and the ORM's bookkeeping would cost more
# than the database's work.
_INSERT_EVENTS = _EVENTS.insert().returning(_EVENTS.c.sequence, sort_by_parameter_order=True)
_INSERT_LOG = cast(Table, MessageLogEntry.__table__).insert()
# The head version of each (entity, id) of a batch in one round trip, the keys passed as one
# array parameter (the statement stays the same whatever the batch size, and costs nothing to
# build). Each max() is answered from the end of the unique index (the min/max optimisation of
# both databases), so the cost does not grow with the entities' histories.
_HEADS = {
    "postgresql": text(
        "SELECT (SELECT max(e.version) FROM event_store AS e"
        " WHERE e.entity = k.entity AND e.entity_id = k.entity_id)"
        " FROM unnest(CAST(:entities AS varchar[]), CAST(:ids AS bigint[]))"
        " WITH ORDINALITY AS k(entity, entity_id, n) ORDER BY k.n"
    ),
    "sqlite": text(
        "SELECT (SELECT max(e.version) FROM event_store AS e"
        " WHERE e.entity = json_extract(k.value, '$[0]')"
        " AND e.entity_id = json_extract(k.value, '$[1]'))"
        " FROM json_each(:keys) AS k ORDER BY k.key"
    ),
}
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
        return await _with_retry(self._db, self._max_attempts, lambda s: self._append(s, events))

    async def _append(
        self, session: AsyncSession, events: Sequence[Incoming]
    ) -> list[RecordedEvent | None]:
        keys = sorted({(e.change.entity, e.change.id) for e in events})
        dialect = self._db.engine.dialect.name
        if dialect == "postgresql":
            await session.execute(_LOCK, {"keys": sorted({_lock_key(k) for k in keys})})
        ids = {e.message_id for e in events}
        seen = set(
            (
                await session.scalars(
                    select(StoredEvent.message_id).where(StoredEvent.message_id.in_(ids))
                )
            ).all()
        )
        heads = await session.execute(_HEADS[dialect], _head_params(dialect, keys))
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
            raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


def _head_params(dialect: str, keys: Sequence[tuple[str, int]]) -> dict[str, Any]:
    if dialect == "sqlite":
        return {"keys": json.dumps(keys)}
    return {"entities": [entity for entity, _ in keys], "ids": [i for _, i in keys]}


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
