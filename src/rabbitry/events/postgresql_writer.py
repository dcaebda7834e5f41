"""Appending change events on PostgreSQL: one call on the driver's own connection.

A batch is one call of ``event_store_append()`` (migration ``0009_events_append``) outside a
transaction, so in one of its own: it takes a transaction-scoped advisory lock per (entity, id),
in one global order, so that writers of the same entity queue up instead of colliding; then one
``INSERT … SELECT`` from one array parameter per column (``unnest``) of the new events,
numbered in arrival order from their heads, which it reads itself; the commit ends the call.
One round trip, where BEGIN, the insert and COMMIT took three. A batch with a message stored
before is written again the longer way: the locks, one lookup of the heads and of the stored
message ids, then the insert (see :func:`append_postgresql`).

The workflow worker's rows (:func:`append_rows_postgresql`) go through
``event_store_append_rows()`` (migration ``0011_events_append_rows``): the same locks, order
and numbering, a plain insert (a message stored before fails it on its unique constraint), and
the heads of the (entity, id)s the caller remembers from its earlier batches (:class:`Heads`)
taken from it instead of read from the index.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import itertools
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rabbitry.events.change import RecordedEvent
from rabbitry.events.incoming import DATA_JSON, Incoming, Row, incoming_of
from rabbitry.events.writes import Refused, classify
from rabbitry.storage.database import Database

T = TypeVar("T")

# The longer way, for a batch with a message stored before. The statements' snapshots are
# taken after the locks were granted (a separate, earlier statement), so the heads they read
# include every event committed by a writer they waited for.
# Once the batch's locks are held: the head version of each (entity, id) (kind 0),
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
    " WITH ORDINALITY AS x(e, i, v, t, u, d, m, o, n) ORDER BY n"
    " RETURNING message_id, sequence, version"
)
# The usual way: the locks and an insert that reads the heads itself (a statement does not see
# its own rows, so each max() is the head before the batch), in one call outside a transaction
# (migration 0009_events_append): one round trip, the commit included.
_APPEND_CALL = "SELECT * FROM event_store_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
# The call for rows (migration 0011_events_append_rows), whose numbers are not needed: it
# returns each row's version, one int array.
_APPEND_ROWS_CALL = (
    "SELECT event_store_append_rows($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
# What separates the values of a column sent as one text (the types, users and data, and
# the message ids when none holds it): none of them can hold it (see the migration); data
# NULL is sent as _NO_DATA.
_SEPARATOR = "\x1f"
_NO_DATA = "-"
# What event_store_append() fails with (nothing kept) when a message was stored before; what
# event_store_append_rows() fails with then is a unique violation on the message id.
_STORED_BEFORE = "RR001"
_UNIQUE_VIOLATION = "23505"
_MESSAGE_ID_CONSTRAINT = "uq_event_store_message_id"
# How many (entity, id) heads a writer remembers: past that it starts again from none.
MAX_HEADS = 1 << 16


class Heads:
    """The head versions of the (entity, id)s a writer stored lately, as its own commits left
    them, so that its next batches need not read them from the index (one probe per event).

    Only a commit of its own sets a head, and versions are only ever added, so a head known
    here is never above the stored one; it is below it when another writer (a worker that
    lost its node, an append of models) stored events of that entity since, and then the
    insert numbered from it fails on the unique constraint on (entity, entity_id, version):
    nothing is kept, and the batch's heads are forgotten before it is written again. A batch
    in the database holds its heads out of here until it commits, so a failure of any kind
    leaves them unknown. Events deleted from the store under a running writer (the store is
    append-only; a restore from a backup) would leave a head here above the stored one: a
    failure of the connection forgets every head, so that a server restarted or replaced is
    read again."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int], int] = {}

    def take(self, keys: Collection[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """The head of each of ``keys`` if known, else ``None``; forgotten until :meth:`put`
        back."""
        return dict(zip(keys, map(self._known.pop, keys, itertools.repeat(None)), strict=True))

    def put(self, heads: dict[tuple[str, int], int]) -> None:
        if len(self._known) + len(heads) > MAX_HEADS:
            self._known.clear()
        self._known.update(heads)

    def forget(self) -> None:
        self._known.clear()


async def append_postgresql(
    database: Database, events: Sequence[Incoming]
) -> list[RecordedEvent | None]:
    """One batch on PostgreSQL, on the driver's own connection (checked out of the engine's
    pool): one round trip, a call of ``event_store_append()`` that takes the locks and inserts
    the events, numbered from the heads it reads, in a transaction of its own.

    A batch holding a message stored before (a redelivery) is written again the longer way,
    four round trips: the heads and the stored ids looked up first, so that the new events
    are numbered without a gap where the repeated one was."""
    results = await _append_at_once(database, events)
    if results is None:
        results = await _append_after_lookup(database, events)
    return results


async def append_rows_postgresql(
    database: Database, rows: Sequence[Row], heads: Heads | None = None
) -> list[None]:
    """:func:`append_postgresql` for rows (:func:`~rabbitry.events.incoming.parse_row`): the
    same order, dedupe and locks in one call of ``event_store_append_rows()``, with no model
    per event and nothing returned per event but ``None`` (stored, or stored before); the
    heads known in ``heads`` are not read again, and those of this batch are kept there once
    it committed. A batch with a redelivery takes the longer way with the rows' models (rare:
    a message stored before)."""
    if not await _rows_at_once(database, rows, heads or Heads()):
        await _append_after_lookup(database, [incoming_of(row) for row in rows])
    return [None] * len(rows)


async def _rows_at_once(database: Database, rows: Sequence[Row], known: Heads) -> bool:
    """The rows in one call, as :func:`_append_at_once`; ``False`` (nothing kept) when one of
    their messages turned out to be stored before."""
    recorded_at = dt.datetime.now(dt.UTC)
    if not rows:
        return True
    # Column by column, in C where it can be (zip, map, set): this runs for every event.
    entities, ids, kinds, users, data, message_ids, occurred = zip(*rows, strict=True)
    if len(set(message_ids)) != len(rows):  # repeats within the batch: the first is stored
        seen: set[str] = set()
        first: list[Row] = []
        for row in rows:
            if row[5] not in seen:
                seen.add(row[5])
                first.append(row)
        entities, ids, kinds, users, data, message_ids, occurred = zip(*first, strict=True)
    keys = list(zip(entities, ids, strict=True))
    distinct = set(keys)
    # Each event's place among its entity's in the batch, from 1, in arrival order; the call
    # adds the head: the one known here (out of ``known`` until this batch committed), else
    # the one it reads.
    taken = known.take(distinct)
    places: list[int] | None = None  # each 1: no two events of one entity in the batch
    if len(distinct) != len(keys):
        counts: dict[tuple[str, int], int] = {}
        places = []
        for key in keys:
            counts[key] = place = counts.get(key, 0) + 1
            places.append(place)
    heads = list(map(taken.__getitem__, keys))
    locks = sorted(map(_lock_key, distinct))
    # Fewer values for the driver to encode one by one: three columns as one text each (four
    # with the message ids), the entity names and the times as the batch's distinct ones and
    # an index per event.
    count = len(keys)
    texts = [
        _SEPARATOR.join(kinds),
        _SEPARATOR.join(users),
        _SEPARATOR.join([_NO_DATA if d is None else d for d in data]),
    ]
    if any(text.count(_SEPARATOR) != count - 1 for text in texts):
        raise RuntimeError("a change type, user or data holds U+001F")  # parse_row makes none
    joined = _SEPARATOR.join(message_ids)
    as_text = joined.count(_SEPARATOR) == count - 1  # else an id holds it: as an array
    names, name_index = _distinct(entities)
    times, time_index = _distinct(occurred)
    async with _append_call(database, known) as call:
        versions = await call.driver.fetchval(
            _APPEND_ROWS_CALL,
            names,
            name_index,
            ids,
            places,
            heads,
            *texts,
            joined if as_text else None,
            None if as_text else message_ids,
            times,
            time_index,
            recorded_at,
            locks,
        )
    if call.stored_before:
        return False
    known.put(dict(zip(keys, versions, strict=True)))  # each key's last version is its head
    return True


def _distinct(values: Sequence[T]) -> tuple[list[T], list[int]]:
    """The distinct ``values`` in their first order, and each value's place among them (from
    1, as SQL arrays count)."""
    distinct = list(dict.fromkeys(values))
    place = {value: number for number, value in enumerate(distinct, 1)}
    return distinct, list(map(place.__getitem__, values))


@dataclass
class _Call:
    driver: Any  # asyncpg's connection
    stored_before: bool = False


@contextlib.asynccontextmanager
async def _append_call(database: Database, heads: Heads | None = None) -> AsyncIterator[_Call]:
    """A writer connection for one call of ``event_store_append()`` or
    ``event_store_append_rows()``, unpinged (a failure is retried). ``stored_before`` once the
    call failed because the batch holds a message stored before (RR001, or a unique violation
    on the message id; nothing kept); a transient failure invalidates the connection, so a
    dead one does not go back to the pool, and forgets every head known in ``heads``."""
    async with database.writer_engine.connect() as conn:
        call = _Call((await conn.get_raw_connection()).driver_connection)
        try:
            yield call
        except Exception as exc:
            state = getattr(exc, "sqlstate", None)
            if state == _STORED_BEFORE or (
                state == _UNIQUE_VIOLATION
                and getattr(exc, "constraint_name", None) == _MESSAGE_ID_CONSTRAINT
            ):
                call.stored_before = True
                return
            if classify(exc) == "transient":
                if heads is not None:
                    heads.forget()
                await conn.invalidate()
            raise


async def _append_at_once(
    database: Database, events: Sequence[Incoming]
) -> list[RecordedEvent | None] | None:
    """The batch in one call; ``None`` (nothing kept) when one of its messages turned out to
    be stored before."""
    recorded_at = dt.datetime.now(dt.UTC)
    # Numbered from 0 here (repeats within the batch left out); the call adds the heads.
    results = _numbered(events, {}, set(), recorded_at)
    stored = [r for r in results if r is not None]
    locks = sorted({_lock_key((e.entity, e.id)) for e in stored})
    async with _append_call(database) as call:
        rows = await call.driver.fetch(_APPEND_CALL, *_columns(stored), recorded_at, locks)
    if call.stored_before:
        return None
    _fill_in(stored, rows)
    return results


async def _append_after_lookup(
    database: Database, events: Sequence[Incoming]
) -> list[RecordedEvent | None]:
    """The batch in one transaction, numbered around the messages stored before."""
    keys = sorted({(e.change.entity, e.change.id) for e in events})
    # BEGIN and the locks in one round trip (a simple query may hold several statements; the
    # lock keys are integers computed here, so the text holds nothing from the messages).
    # Each round trip also waits for the event loop's turn, busy with the consumer.
    lock_keys = ",".join(str(key) for key in sorted({_lock_key(k) for k in keys}))
    begin = f"BEGIN; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{lock_keys}}}'::bigint[]) t(k)"
    async with database.writer_engine.connect() as conn:  # unpinged: a failure is retried
        driver: Any = (await conn.get_raw_connection()).driver_connection  # asyncpg's
        try:
            await driver.execute(begin)
            try:
                recorded_at = dt.datetime.now(dt.UTC)
                found = await driver.fetch(
                    _LOOKUP_POSTGRESQL,
                    [entity for entity, _ in keys],
                    [entity_id for _, entity_id in keys],
                    list({e.message_id for e in events}),
                )
                heads = {(r[1], r[2]): r[3] or 0 for r in found if r[0] == 0}
                seen = {r[1] for r in found if r[0] == 1}
                results = _numbered(events, heads, seen, recorded_at)
                stored = [r for r in results if r is not None]
                rows = []
                if stored:
                    rows = await driver.fetch(_INSERT_POSTGRESQL, *_columns(stored), recorded_at)
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
    _fill_in(stored, rows)
    return results


def _fill_in(stored: Sequence[RecordedEvent], rows: Sequence[Any]) -> None:
    """Each stored event's sequence and version, from the rows its insert returned."""
    numbered = {row[0]: (row[1], row[2]) for row in rows}  # RETURNING promises no order
    for event in stored:
        # Ours alone until returned: filling in the fields is cheaper than replace() per event.
        sequence, version = numbered[event.message_id]
        object.__setattr__(event, "sequence", sequence)
        object.__setattr__(event, "version", version)


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
            None if (d := e.data) is None else DATA_JSON.encode(d if type(d) is dict else dict(d))
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


@functools.lru_cache(maxsize=1 << 16)  # an entity's next batch needs its key again
def _lock_key(key: tuple[str, int]) -> int:
    """A stable signed 64-bit key per (entity, id) for pg_advisory_xact_lock; a collision only
    makes two entities share a lock."""
    digest = hashlib.blake2b(f"{key[0]}\x00{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
