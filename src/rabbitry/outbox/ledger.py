"""The pending-message ledger: where messages wait when the broker cannot take them.

:class:`Ledger` is the publisher's :class:`~rabbitry.messaging.publisher.Fallback`: it stores
(route, message, reason) with ``processed=false``, and raises :class:`StorageError` when it
cannot (the publisher lets that reach the caller: never a silent loss). It also owns the
queries of the requeue command:

* :meth:`Ledger.claim` leases a batch of pending rows, oldest first, in one atomic
  ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``. On PostgreSQL the inner select
  takes its rows ``FOR UPDATE SKIP LOCKED``, so concurrent runs never wait for, nor take, each
  other's rows; on SQLite the statement runs under the database's single write lock. Either
  way a leased row (``claim_token`` set, ``claimed_until`` in the future) is skipped by every
  other run until its lease ends, and a crashed run's lease simply expires.
* :meth:`Ledger.settle` marks the published rows processed and the failed ones pending again,
  with ``attempts + 1``, ``last_error`` and a back-off before the relay tries them again.
* :meth:`Ledger.stage` writes rows on a caller's own connection, inside its transaction, leased
  to the caller until it settles them (the SQLAlchemy change tracker's outbox delivery).

Rows are plain :class:`PendingRow` values built from Core statements: a run over a million rows
holds one batch in memory, never an ORM identity map.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from rabbitry.errors import MessageError, StorageError
from rabbitry.messaging.envelope import Message, decode, encode_headers
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.codec import headers_from_json, headers_to_json
from rabbitry.outbox.filters import Origin, RequeueFilter
from rabbitry.outbox.models import PENDING_CLAUSE, PendingMessage, QueueRecord
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

TABLE: Table = PendingMessage.__table__  # type: ignore[assignment]  # declared as FromClause
# Longest back-off the relay waits before retrying a row that failed; a user's requeue run
# ignores back-off and tries every pending row at once.
MAX_BACKOFF = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class PendingRow:
    """One ledger row, as the requeue command and the back-office see it."""

    id: int
    queue: str
    exchange: str
    routing_key: str
    body: str
    headers: dict[str, Any]
    message_id: str
    created_at: dt.datetime
    processed: bool = False
    processed_at: dt.datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    origin: str = Origin.CONTINGENCY.value

    @property
    def type(self) -> str:
        """The message type (``rr_job``), for display."""
        return str(self.headers.get("rr_job", ""))

    def route(self) -> Route:
        return Route(self.exchange, self.routing_key, queue=self.queue)

    def message(self) -> Message:
        """The stored message: same id, same body bytes, same headers.

        Raises :class:`MessageError` if the stored row cannot be rebuilt (corrupt JSON).
        """
        try:
            headers = headers_from_json(self.headers)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"stored headers are corrupt: {exc}") from exc
        return decode(
            self.body.encode("utf-8"),
            headers,
            message_id=self.message_id,
            timestamp=self.created_at,
            strict=False,
        )


_ROW_COLUMNS = (
    TABLE.c.id,
    TABLE.c.queue,
    TABLE.c.exchange,
    TABLE.c.routing_key,
    TABLE.c.body,
    TABLE.c.headers,
    TABLE.c.message_id,
    TABLE.c.created_at,
    TABLE.c.processed,
    TABLE.c.processed_at,
    TABLE.c.attempts,
    TABLE.c.last_error,
    TABLE.c.origin,
)


def _row(values: Any) -> PendingRow:
    headers = values.headers
    if isinstance(headers, str):  # a driver that hands JSON back as text
        headers = json.loads(headers)
    return PendingRow(
        id=values.id,
        queue=values.queue,
        exchange=values.exchange,
        routing_key=values.routing_key,
        body=values.body,
        headers=headers,
        message_id=values.message_id,
        created_at=values.created_at,
        processed=values.processed,
        processed_at=values.processed_at,
        attempts=values.attempts,
        last_error=values.last_error,
        origin=values.origin,
    )


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a requeue run is: rows after (created_at, id), up to ``max_id`` (its start)."""

    max_id: int
    created_at: dt.datetime | None = None
    id: int = 0


_NO_SORT = text("SET LOCAL enable_sort = off")  # a constant statement: nothing interpolated


def backoff(attempts: int) -> dt.timedelta:
    """How long the relay leaves a row alone after its ``attempts``-th failure."""
    seconds = 2.0 ** min(max(attempts, 1), 16)
    return min(dt.timedelta(seconds=seconds), MAX_BACKOFF)


class Ledger:
    """Pending messages in the database. Satisfies the publisher's ``Fallback`` protocol."""

    def __init__(self, db: Database, *, origin: Origin = Origin.CONTINGENCY) -> None:
        self.db = db
        self.origin = origin

    async def store(self, items: Sequence[tuple[Route, Message, str]]) -> None:
        """Persist (route, message, reason) items as contingency rows (``Fallback``)."""
        await self.add(items, origin=self.origin)

    async def add(
        self, items: Sequence[tuple[Route, Message, str]], *, origin: Origin
    ) -> list[int]:
        """Insert the items in one transaction; returns their row ids, in order.

        Raises :class:`StorageError` when nothing could be stored (nothing is, then).
        """
        if not items:
            return []
        now = utcnow()
        try:
            values = [
                self._values(route, message, reason, origin, now)
                for route, message, reason in items
            ]
        except (MessageError, UnicodeDecodeError) as exc:
            raise StorageError(f"cannot store the message(s) in the outbox: {exc}") from exc
        statement = TABLE.insert().returning(TABLE.c.id, sort_by_parameter_order=True)
        async with self._transaction() as conn:
            await _label_ad_hoc(conn, values)
            result = await conn.execute(statement, values)
            return [row.id for row in result]

    def stage(
        self,
        connection: Connection,
        items: Sequence[tuple[Route, Message]],
        *,
        token: str,
        until: dt.datetime,
    ) -> list[int]:
        """Insert ``items`` as pending contingency rows on a caller's own (sync) connection,
        inside the caller's transaction, so that they commit or roll back with its writes;
        returns their row ids, in order. Same rows as :meth:`store` writes.

        The rows are leased with ``token`` until ``until``: the caller publishes them once its
        transaction committed and records the outcome with :meth:`settle` (same ``token``). If
        it never does (it died), the lease ends and the relay or a requeue run sends them.
        Database errors are the caller's connection's own (they fail the caller's flush).
        """
        if not items:
            return []
        now = utcnow()
        try:
            values = [
                self._values(route, message, "", Origin.CONTINGENCY, now)
                for route, message in items
            ]
        except (MessageError, UnicodeDecodeError) as exc:
            raise StorageError(f"cannot store the message(s) in the outbox: {exc}") from exc
        for value in values:
            value["claim_token"] = token
            value["claimed_until"] = until
        owners = _owners_query(values)
        if owners is not None:
            _file_ad_hoc(values, connection.execute(owners).all())
        statement = TABLE.insert().returning(TABLE.c.id, sort_by_parameter_order=True)
        return [row.id for row in connection.execute(statement, values)]

    def _values(
        self, route: Route, message: Message, reason: str, origin: Origin, now: dt.datetime
    ) -> dict[str, Any]:
        return {
            "queue": route.queue or "",
            "exchange": route.exchange,
            "routing_key": route.routing_key,
            "body": message.body().decode("utf-8"),
            "headers": headers_to_json(encode_headers(message)),
            "message_id": message.id,
            "created_at": now,
            "processed": False,
            "attempts": 0,
            # Why the broker did not take it (none for a row a user parked by hand).
            "last_error": reason or None,
            "origin": origin.value,
        }

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a transaction (every statement here is Core: no ORM unit of
        work, no identity map), committed on success; failures become StorageError."""
        try:
            async with self.db.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            # A refused or dropped connection can surface as a bare OSError from the driver.
            raise StorageError(f"database unreachable: {exc}") from exc

    # -- queries -------------------------------------------------------------------------

    async def get(self, row_id: int) -> PendingRow | None:
        async with self._transaction() as conn:
            result = await conn.execute(select(*_ROW_COLUMNS).where(TABLE.c.id == row_id))
            found = result.first()
        return _row(found) if found is not None else None

    async def count(self, where: RequeueFilter, *, pending: bool | None = True) -> int:
        """How many rows match ``where`` (pending ones by default)."""
        statement = select(func.count()).select_from(TABLE).where(*_conditions(where))
        if pending is not None:
            statement = statement.where(PENDING_CLAUSE if pending else TABLE.c.processed)
        async with self._transaction() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def pending_by_queue(self) -> dict[str, int]:
        """How many rows wait, per ``queue`` value."""
        statement = (
            select(TABLE.c.queue, func.count()).where(PENDING_CLAUSE).group_by(TABLE.c.queue)
        )
        async with self._transaction() as conn:
            return {queue: int(n) for queue, n in (await conn.execute(statement)).all()}

    async def rows(
        self,
        where: RequeueFilter,
        *,
        pending: bool | None = True,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[PendingRow]:
        """A page of rows matching ``where`` (for listings: the back-office, ``-v``)."""
        order = (TABLE.c.created_at, TABLE.c.id)
        statement: Select[Any] = select(*_ROW_COLUMNS).where(*_conditions(where))
        if pending is not None:
            statement = statement.where(PENDING_CLAUSE if pending else TABLE.c.processed)
        statement = statement.order_by(*(c.desc() for c in order) if newest_first else order)
        async with self._transaction() as conn:
            result = await conn.execute(statement.limit(limit).offset(offset))
            return [_row(r) for r in result]

    async def start(self, where: RequeueFilter) -> Cursor | None:
        """The cursor of a new requeue run, or ``None`` when nothing matches."""
        statement = select(func.max(TABLE.c.id)).where(PENDING_CLAUSE, *_conditions(where))
        async with self._transaction() as conn:
            max_id = (await conn.execute(statement)).scalar_one_or_none()
        return Cursor(max_id=int(max_id)) if max_id is not None else None

    async def claim(
        self,
        where: RequeueFilter,
        cursor: Cursor,
        *,
        token: str,
        limit: int,
        lease: dt.timedelta,
        respect_backoff: bool = False,
    ) -> list[PendingRow]:
        """Lease up to ``limit`` pending rows after ``cursor``, oldest first.

        Rows leased by another run are skipped; with ``respect_backoff`` (the relay), so are
        rows that failed recently.
        """
        now = utcnow()
        available = (
            or_(TABLE.c.claimed_until.is_(None), TABLE.c.claimed_until <= now)
            if respect_backoff
            else or_(TABLE.c.claim_token.is_(None), TABLE.c.claimed_until <= now)
        )
        candidates = (
            select(TABLE.c.id)
            .where(PENDING_CLAUSE, available, TABLE.c.id <= cursor.max_id, *_conditions(where))
            .order_by(TABLE.c.created_at, TABLE.c.id)
            .limit(limit)
        )
        if cursor.created_at is not None:
            candidates = candidates.where(
                tuple_(TABLE.c.created_at, TABLE.c.id) > tuple_(cursor.created_at, cursor.id)
            )
        if not self.db.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        statement = (
            update(TABLE)
            .where(TABLE.c.id.in_(candidates.scalar_subquery()))
            .values(claim_token=token, claimed_until=now + lease)
            .returning(*_ROW_COLUMNS)
        )
        async with self._transaction() as conn:
            if not self.db.is_sqlite:
                # Right after a burst of contingency inserts the table's statistics are stale
                # and PostgreSQL estimates a handful of pending rows: it then sorts all of them
                # on every claim (O(n) per batch, 250 ms at 100,000 rows). Walking the partial
                # index in order and stopping at LIMIT is always the right plan for a queue.
                await conn.execute(_NO_SORT)
            result = await conn.execute(statement)
            rows = [_row(r) for r in result]
        # RETURNING gives no order guarantee.
        rows.sort(key=lambda r: (r.created_at, r.id))
        return rows

    async def settle(
        self,
        token: str,
        published: Sequence[int],
        failed: Sequence[tuple[int, int, str]],
    ) -> None:
        """Record a batch's outcome: ``published`` row ids are processed now; ``failed`` are
        (row id, attempts so far, error) and stay pending. Only rows still leased with
        ``token`` are touched."""
        now = utcnow()
        async with self._transaction() as conn:
            if published:
                await conn.execute(
                    update(TABLE)
                    .where(TABLE.c.id.in_(published), TABLE.c.claim_token == token)
                    .values(
                        processed=True,
                        processed_at=now,
                        attempts=TABLE.c.attempts + 1,
                        claim_token=None,
                        claimed_until=None,
                    )
                )
            if failed:
                await conn.execute(
                    update(TABLE)
                    .where(TABLE.c.id == bindparam("row_id"), TABLE.c.claim_token == token)
                    .values(
                        attempts=TABLE.c.attempts + 1,
                        last_error=bindparam("error"),
                        claim_token=None,
                        claimed_until=bindparam("retry_at"),
                    ),
                    [
                        {
                            "row_id": row_id,
                            "error": error[:2000],
                            "retry_at": now + backoff(attempts + 1),
                        }
                        for row_id, attempts, error in failed
                    ],
                )

    async def release(self, token: str, ids: Sequence[int]) -> None:
        """Give back rows ``ids`` if still leased with ``token`` (a run that is stopping)."""
        if not ids:
            return
        async with self._transaction() as conn:
            await conn.execute(
                update(TABLE)
                .where(TABLE.c.id.in_(ids), TABLE.c.claim_token == token)
                .values(claim_token=None, claimed_until=None)
            )


async def _label_ad_hoc(conn: AsyncConnection, values: list[dict[str, Any]]) -> None:
    """File rows without a registry name under the one active registry entry that publishes
    to their exchange and routing key, if exactly one does (so ``rabbitry requeue NAME``
    finds them), else under ``<exchange>/<routing key>``."""
    statement = _owners_query(values)
    if statement is not None:
        _file_ad_hoc(values, (await conn.execute(statement)).all())


def _owners_query(values: list[dict[str, Any]]) -> Select[str, str, str] | None:
    """The registry entries that may own the rows without a registry name (None: no such row)."""
    ad_hoc = [v for v in values if not v["queue"]]
    if not ad_hoc:
        return None
    return select(QueueRecord.name, QueueRecord.exchange, QueueRecord.routing_key).where(
        QueueRecord.active.is_(True),
        QueueRecord.exchange.in_({v["exchange"] for v in ad_hoc}),
    )


def _file_ad_hoc(values: list[dict[str, Any]], entries: Sequence[Any]) -> None:
    ad_hoc = [v for v in values if not v["queue"]]
    owners: dict[tuple[str, str], list[str]] = {}
    for name, exchange, routing_key in entries:
        owners.setdefault((exchange, routing_key), []).append(name)
    for v in ad_hoc:
        names = owners.get((v["exchange"], v["routing_key"]), [])
        v["queue"] = names[0] if len(names) == 1 else f"{v['exchange']}/{v['routing_key']}"


def _conditions(where: RequeueFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.queue is not None:
        conditions.append(TABLE.c.queue == where.queue)
    if where.since is not None:
        conditions.append(TABLE.c.created_at >= where.since)
    if where.before is not None:
        conditions.append(TABLE.c.created_at < where.before)
    if where.origin is not None:
        conditions.append(TABLE.c.origin == where.origin.value)
    if where.ids is not None:
        conditions.append(TABLE.c.id.in_(sorted(where.ids)))
    return [and_(*conditions)] if conditions else []
