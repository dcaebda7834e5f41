"""Appending change events on SQLite: one writer at a time (the caller's transaction holds the
write lock), so the reads and the insert go through SQLAlchemy, in three statements: the message
ids stored before, every entity's head version, the new events numbered from their heads."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

from sqlalchemy import Table, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from rabbitry.events.change import ChangeType, RecordedEvent, user_from_text
from rabbitry.events.incoming import Incoming
from rabbitry.events.models import StoredEvent

_EVENTS = cast(Table, StoredEvent.__table__)
# Core, not ORM, inserts: the rows are plain dicts and the ORM's bookkeeping would cost more
# than the database's work.
_INSERT_EVENTS = _EVENTS.insert().returning(_EVENTS.c.sequence, sort_by_parameter_order=True)
# SQLite: the head version of each (entity, id) of a batch in one round trip, the keys passed
# as one JSON parameter. Each max() is answered from the end of the unique index (the min/max
# optimisation), so the cost does not grow with the entities' histories.
_HEADS_SQLITE = text(
    "SELECT (SELECT max(e.version) FROM event_store AS e"
    " WHERE e.entity = json_extract(k.value, '$[0]')"
    " AND e.entity_id = json_extract(k.value, '$[1]'))"
    " FROM json_each(:keys) AS k ORDER BY k.key"
)


async def append_sqlite(
    session: AsyncSession, events: Sequence[Incoming]
) -> list[RecordedEvent | None]:
    """Store ``events`` on ``session`` (in a transaction that holds the write lock); one result
    each: the stored event, or ``None`` for a message stored before."""
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
