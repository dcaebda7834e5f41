"""The outbox's one store: every read and write of ``outbox_messages``.

:class:`Outbox` is the publisher's :class:`~rabbitry.messaging.publisher.Fallback`: it stores
(route, message, reason) with ``processed=false``, and raises :class:`StorageError` when it
cannot (the publisher lets that reach the caller: never a silent loss). It also answers the
requeue run, the relay, the change tracker, the back-office and ``rabbitry outbox``:

* :meth:`Outbox.claim` leases a batch of pending messages, oldest first, in one atomic
  ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``. On PostgreSQL the inner select
  takes its rows ``FOR UPDATE SKIP LOCKED``, so concurrent runs never wait for, nor take, each
  other's rows; on SQLite the statement runs under the database's single write lock. Either
  way a leased row (``claim_token`` set, ``claimed_until`` in the future) is skipped by every
  other run until its lease ends, and a crashed run's lease simply expires.
* The lease token is the run's fencing token: every write of a run (:meth:`~Outbox.settle`,
  :meth:`~Outbox.renew`, :meth:`~Outbox.release`) matches it, so once another run took a row
  over, nothing the first one does touches it again. :meth:`~Outbox.renew` is the check right
  before a publish: a run that was paused past its lease (a stopped process, a long GC, a
  laptop lid) finds the rows another run took over missing from the answer and does not
  publish them: no duplicate.
* :meth:`Outbox.settle` marks the published rows processed and the failed ones pending again,
  with ``attempts + 1``, ``last_error``, its kind (``failure``: refused or unavailable) and a
  back-off (``next_attempt_at``) before the relay tries them again. A refusal (no such
  exchange, unroutable) backs off far longer than an outage: waiting does not cure it, and a
  row retried every few seconds forever only fills the log.
* :meth:`Outbox.stage` writes rows on a caller's own connection, inside its transaction, leased
  to the caller until it settles them (the SQLAlchemy change tracker's outbox delivery).
* :meth:`Outbox.page` lists messages newest first, keyset-paginated: a page is "the next
  ``limit`` rows after the key (created_at, id) of the last row shown", answered by walking an
  index from that key, so the thousandth page costs what the first does (OFFSET pagination
  reads and drops every row before the page instead: ``bench/backoffice.py`` measures both).

Rows are plain :class:`~rabbitry.outbox.message.OutboxMessage` values built from Core
statements: a run over a million rows holds one batch in memory, never an ORM identity map.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    bindparam,
    func,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from rabbitry.errors import MessageError, StorageError
from rabbitry.messaging.envelope import Message, encode_headers
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.codec import headers_to_json
from rabbitry.outbox.filters import Failure, Origin, RequeueFilter
from rabbitry.outbox.message import OutboxMessage, OutboxQuery, Page, PageKey, State
from rabbitry.outbox.models import PENDING_CLAUSE, OutboxMessageRecord, QueueRecord
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

TABLE: Table = OutboxMessageRecord.__table__  # type: ignore[assignment]  # declared as FromClause
# Longest back-off the relay waits before retrying a row that failed; a user's requeue run
# ignores back-off and tries every pending row at once.
MAX_BACKOFF = dt.timedelta(seconds=60)
# The same for a row the broker refused: it waits for someone to fix the topology, and an
# hour is as long as a fixed exchange waits for the relay (`rabbitry requeue` does not wait).
REFUSED_FIRST_BACKOFF = dt.timedelta(seconds=30)
MAX_REFUSED_BACKOFF = dt.timedelta(hours=1)
MAX_PAGE = 500

_COLUMNS = tuple(TABLE.c[name] for name in OutboxMessage.__dataclass_fields__)


def _message(values: Any) -> OutboxMessage:
    headers = values.headers
    if isinstance(headers, str):  # a driver that hands JSON back as text
        headers = json.loads(headers)
    return OutboxMessage(**{**values._mapping, "headers": headers})


def conditions(
    where: RequeueFilter, state: State | None = State.PENDING
) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``where`` among the messages in ``state`` (``None``: pending and
    processed, not deleted). The one filter-to-SQL builder: the requeue run, the relay, the
    listings and the bench all use it."""
    found: list[ColumnElement[bool]] = []
    if state is State.PENDING:
        found.append(PENDING_CLAUSE)  # the partial indexes' own predicate
    elif state is State.PROCESSED:
        found += [TABLE.c.processed == true(), TABLE.c.deleted_at.is_(None)]
    elif state is State.DELETED:
        found.append(TABLE.c.deleted_at.is_not(None))
    else:
        found.append(TABLE.c.deleted_at.is_(None))
    if where.queue is not None:
        found.append(TABLE.c.queue == where.queue)
    if where.since is not None:
        found.append(TABLE.c.created_at >= where.since)
    if where.before is not None:
        found.append(TABLE.c.created_at < where.before)
    if where.origin is not None:
        found.append(TABLE.c.origin == where.origin.value)
    if where.ids is not None:
        found.append(TABLE.c.id.in_(sorted(where.ids)))
    return found


def page_statement(query: OutboxQuery, after: PageKey | None, limit: int) -> Select[Any]:
    """Newest first from ``after`` (exclusive); one more row than asked tells if there is more."""
    statement = select(*_COLUMNS).where(*conditions(query.where, query.state))
    if after is not None:
        # (created_at, id) < key, spelled so that both databases see an index range on
        # created_at (the first term) and check the tie on id as a filter. In a bare OR
        # PostgreSQL finds no index condition: it walks the index from the newest row and
        # filters out every row before the page (63 ms at depth 160,000; 0.04 ms this way).
        statement = statement.where(
            TABLE.c.created_at <= after.created_at,
            or_(TABLE.c.created_at < after.created_at, TABLE.c.id < after.id),
        )
    order = (TABLE.c.created_at.desc(), TABLE.c.id.desc())
    return statement.order_by(*order).limit(limit + 1)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a requeue run is: rows after (created_at, id), up to ``max_id`` (its start)."""

    max_id: int
    created_at: dt.datetime | None = None
    id: int = 0


_NO_SORT = text("SET LOCAL enable_sort = off")  # a constant statement: nothing interpolated


def backoff(attempts: int, failure: Failure = Failure.UNAVAILABLE) -> dt.timedelta:
    """How long the relay leaves a row alone after its ``attempts``-th failure: doubling, from
    2 s up to a minute after an outage, from 30 s up to an hour after a refusal."""
    steps = min(max(attempts, 1), 16) - 1
    if failure is Failure.REFUSED:
        return min(REFUSED_FIRST_BACKOFF * (1 << steps), MAX_REFUSED_BACKOFF)
    return min(dt.timedelta(seconds=2.0 * 2**steps), MAX_BACKOFF)


class Outbox:
    """The messages in ``outbox_messages``. Satisfies the publisher's ``Fallback`` protocol."""

    def __init__(self, db: Database, *, origin: Origin = Origin.CONTINGENCY) -> None:
        self.db = db
        self.origin = origin

    # -- writing -------------------------------------------------------------------------

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
        async with self.db.connection() as conn:
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
        failure = Failure.of(reason) if reason else None
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
            "failure": failure.value if failure else None,
            # A refused message waits out its first back-off before the relay tries it: the
            # broker just said no, and only a change of its topology will make it say yes.
            "next_attempt_at": now + backoff(1, failure) if failure is Failure.REFUSED else None,
            "origin": origin.value,
        }

    async def delete(self, ids: Sequence[int]) -> list[int]:
        """Soft-delete rows ``ids``; returns those that were deleted now (not before, existing)."""
        if not ids:
            return []
        statement = (
            update(TABLE)
            .where(TABLE.c.id.in_(sorted(set(ids))), TABLE.c.deleted_at.is_(None))
            .values(deleted_at=utcnow(), processed=True)
            .returning(TABLE.c.id)
        )
        async with self.db.connection() as conn:
            return sorted(row.id for row in await conn.execute(statement))

    async def reopen(self, ids: Sequence[int]) -> None:
        """Make processed rows among ``ids`` pending again (not deleted ones): an operator's
        explicit re-send."""
        statement = (
            update(TABLE)
            .where(TABLE.c.id.in_(sorted(ids)), TABLE.c.processed == true())
            .where(TABLE.c.deleted_at.is_(None))
            .values(processed=False, claim_token=None, claimed_until=None)
        )
        async with self.db.connection() as conn:
            await conn.execute(statement)

    async def mark_requeued(self, ids: Sequence[int]) -> None:
        """Stamp ``requeued_at`` on rows an operator's requeue got confirmed."""
        statement = update(TABLE).where(TABLE.c.id.in_(ids)).values(requeued_at=utcnow())
        async with self.db.connection() as conn:
            await conn.execute(statement)

    # -- reading -------------------------------------------------------------------------

    async def get(self, row_id: int) -> OutboxMessage | None:
        async with self.db.connection() as conn:
            found = (await conn.execute(select(*_COLUMNS).where(TABLE.c.id == row_id))).first()
        return _message(found) if found is not None else None

    async def count(self, where: RequeueFilter, *, state: State | None = State.PENDING) -> int:
        """How many rows in ``state`` match ``where`` (for pending ones, the partial indexes
        answer it)."""
        statement = select(func.count()).select_from(TABLE).where(*conditions(where, state))
        async with self.db.connection() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def pending_by_queue(self) -> dict[str, int]:
        """How many rows wait, per ``queue`` value."""
        statement = (
            select(TABLE.c.queue, func.count()).where(PENDING_CLAUSE).group_by(TABLE.c.queue)
        )
        async with self.db.connection() as conn:
            return {queue: int(n) for queue, n in (await conn.execute(statement)).all()}

    async def rows(
        self,
        where: RequeueFilter,
        *,
        state: State | None = State.PENDING,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[OutboxMessage]:
        """Rows in ``state`` matching ``where``, oldest first unless ``newest_first``."""
        order = (TABLE.c.created_at, TABLE.c.id)
        statement = select(*_COLUMNS).where(*conditions(where, state))
        statement = statement.order_by(*(c.desc() for c in order) if newest_first else order)
        async with self.db.connection() as conn:
            result = await conn.execute(statement.limit(limit).offset(offset))
            return [_message(r) for r in result]

    async def page(
        self, query: OutboxQuery, *, after: PageKey | None = None, limit: int = 50
    ) -> Page:
        """One page of rows matching ``query``, newest first, after the key ``after``."""
        limit = max(1, min(limit, MAX_PAGE))
        async with self.db.connection() as conn:
            found = [_message(r) for r in await conn.execute(page_statement(query, after, limit))]
        more = len(found) > limit
        found = found[:limit]
        return Page(tuple(found), found[-1].key if more and found else None)

    # -- leases --------------------------------------------------------------------------

    async def start(self, where: RequeueFilter) -> Cursor | None:
        """The cursor of a new requeue run, or ``None`` when nothing matches."""
        statement = select(func.max(TABLE.c.id)).where(*conditions(where))
        async with self.db.connection() as conn:
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
    ) -> list[OutboxMessage]:
        """Lease up to ``limit`` pending rows after ``cursor``, oldest first.

        Rows leased by another run are skipped; with ``respect_backoff`` (the relay), so are
        rows that failed recently.
        """
        now = utcnow()
        available = [or_(TABLE.c.claim_token.is_(None), TABLE.c.claimed_until <= now)]
        if respect_backoff:
            available.append(or_(TABLE.c.next_attempt_at.is_(None), TABLE.c.next_attempt_at <= now))
        candidates = (
            select(TABLE.c.id)
            .where(*available, TABLE.c.id <= cursor.max_id, *conditions(where))
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
            .returning(*_COLUMNS)
        )
        async with self.db.connection() as conn:
            if not self.db.is_sqlite:
                # Right after a burst of contingency inserts the table's statistics are stale
                # and PostgreSQL estimates a handful of pending rows: it then sorts all of them
                # on every claim (O(n) per batch, 250 ms at 100,000 rows). Walking the partial
                # index in order and stopping at LIMIT is always the right plan for a queue.
                await conn.execute(_NO_SORT)
            result = await conn.execute(statement)
            found = [_message(r) for r in result]
        # RETURNING gives no order guarantee.
        found.sort(key=lambda r: (r.created_at, r.id))
        return found

    async def renew(self, token: str, ids: Sequence[int], lease: dt.timedelta) -> set[int]:
        """Extend the lease of rows ``ids`` still pending and leased with ``token`` to ``lease``
        from now; returns those ids (the others were taken over, or settled, by another run)."""
        if not ids:
            return set()
        statement = (
            update(TABLE)
            .where(TABLE.c.id.in_(ids), TABLE.c.claim_token == token, PENDING_CLAUSE)
            .values(claimed_until=utcnow() + lease)
            .returning(TABLE.c.id)
        )
        async with self.db.connection() as conn:
            return {row.id for row in await conn.execute(statement)}

    async def settle(
        self,
        token: str,
        published: Sequence[int],
        failed: Sequence[tuple[int, int, str, Failure]],
    ) -> None:
        """Record a batch's outcome: ``published`` row ids are processed now; ``failed`` are
        (row id, attempts so far, error, its kind) and stay pending, with a back-off to match
        (:func:`backoff`). Only rows still leased with ``token`` are touched."""
        now = utcnow()
        async with self.db.connection() as conn:
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
                        next_attempt_at=None,
                    )
                )
            if failed:
                await conn.execute(
                    update(TABLE)
                    .where(TABLE.c.id == bindparam("row_id"), TABLE.c.claim_token == token)
                    .values(
                        attempts=TABLE.c.attempts + 1,
                        last_error=bindparam("error"),
                        failure=bindparam("failure"),
                        claim_token=None,
                        claimed_until=None,
                        next_attempt_at=bindparam("retry_at"),
                    ),
                    [
                        {
                            "row_id": row_id,
                            "error": error[:2000],
                            "failure": kind.value,
                            "retry_at": now + backoff(attempts + 1, kind),
                        }
                        for row_id, attempts, error, kind in failed
                    ],
                )

    async def release(self, token: str, ids: Sequence[int] | None = None) -> int:
        """Give back the pending rows still leased with ``token`` (only ``ids`` among them,
        when given), whatever the run was doing when it stopped (a claim that completed after
        its task was cancelled included), so nothing waits for a lease to expire; returns
        how many."""
        statement = (
            update(TABLE)
            .where(TABLE.c.claim_token == token, PENDING_CLAUSE)
            .values(claim_token=None, claimed_until=None)
        )
        if ids is not None:
            if not ids:
                return 0
            statement = statement.where(TABLE.c.id.in_(ids))
        async with self.db.connection() as conn:
            return (await conn.execute(statement)).rowcount or 0

    async def held_elsewhere(self, where: RequeueFilter, max_id: int, token: str) -> int:
        """How many pending rows matching ``where`` (up to ``max_id``, where a run started) are
        leased by another token right now."""
        now = utcnow()
        statement = (
            select(func.count())
            .select_from(TABLE)
            .where(
                TABLE.c.id <= max_id,
                TABLE.c.claim_token.is_not(None),
                TABLE.c.claim_token != token,
                TABLE.c.claimed_until > now,
                *conditions(where),
            )
        )
        async with self.db.connection() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def untouched(
        self, where: RequeueFilter, max_id: int, after: tuple[dt.datetime, int] | None
    ) -> int:
        """How many pending rows matching ``where`` (up to ``max_id``) come after ``after`` (a
        run's position, as (created_at, id)) and are not leased by anyone: what a run that
        stopped there left for the next one."""
        now = utcnow()
        statement = (
            select(func.count())
            .select_from(TABLE)
            .where(
                TABLE.c.id <= max_id,
                or_(TABLE.c.claim_token.is_(None), TABLE.c.claimed_until <= now),
                *conditions(where),
            )
        )
        if after is not None:
            statement = statement.where(tuple_(TABLE.c.created_at, TABLE.c.id) > tuple_(*after))
        async with self.db.connection() as conn:
            return int((await conn.execute(statement)).scalar_one())


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
