"""The leases of pending outbox rows: how requeue runs and the relay take rows, record what
became of them and give back the rest, without two runs ever sending the same row.

* :meth:`Leases.claim` leases a batch of pending messages, oldest first, in one atomic
  ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``. On PostgreSQL the inner select
  takes its rows ``FOR UPDATE SKIP LOCKED``, so concurrent runs never wait for, nor take, each
  other's rows; on SQLite the statement runs under the database's single write lock. Either
  way a leased row (``claim_token`` set, ``claimed_until`` in the future) is skipped by every
  other run until its lease ends, and a crashed run's lease simply expires.
* The lease token is the run's fencing token: every write of a run (:meth:`~Leases.settle`,
  :meth:`~Leases.renew`, :meth:`~Leases.release`) matches it, so once another run took a row
  over, nothing the first one does touches it again. :meth:`~Leases.renew` is the check right
  before a publish: a run that was paused past its lease (a stopped process, a long GC, a
  laptop lid) finds the rows another run took over missing from the answer and does not
  publish them: no duplicate.
* :meth:`Leases.settle` marks the published rows processed and the failed ones pending again,
  with ``attempts + 1``, ``last_error``, its kind (``failure``: refused or unavailable) and a
  back-off (``next_attempt_at``, :mod:`rabbitry.outbox.backoff`) before the relay tries them
  again.

:class:`~rabbitry.outbox.store.Outbox`, the outbox's one store, is a :class:`Leases`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, bindparam, func, or_, select, text, tuple_, update

from rabbitry.outbox.backoff import backoff
from rabbitry.outbox.filters import Failure, RequeueFilter
from rabbitry.outbox.message import OutboxMessage
from rabbitry.outbox.models import PENDING_CLAUSE
from rabbitry.outbox.queries import COLUMNS, TABLE, conditions, message_of
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a requeue run is: rows after (created_at, id), up to ``max_id`` (its start)."""

    max_id: int
    created_at: dt.datetime | None = None
    id: int = 0


_NO_SORT = text("SET LOCAL enable_sort = off")  # a constant statement: nothing interpolated


class Leases:
    """The leases on the pending rows of ``outbox_messages``, for requeue runs and the relay."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
            .returning(*COLUMNS)
        )
        async with self.db.connection() as conn:
            if not self.db.is_sqlite:
                # Right after a burst of contingency inserts the table's statistics are stale
                # and PostgreSQL estimates a handful of pending rows: it then sorts all of them
                # on every claim (O(n) per batch, 250 ms at 100,000 rows). Walking the partial
                # index in order and stopping at LIMIT is always the right plan for a queue.
                await conn.execute(_NO_SORT)
            result = await conn.execute(statement)
            found = [message_of(r) for r in result]
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
        return await self._count(
            TABLE.c.id <= max_id,
            TABLE.c.claim_token.is_not(None),
            TABLE.c.claim_token != token,
            TABLE.c.claimed_until > now,
            *conditions(where),
        )

    async def untouched(
        self, where: RequeueFilter, max_id: int, after: tuple[dt.datetime, int] | None
    ) -> int:
        """How many pending rows matching ``where`` (up to ``max_id``) come after ``after`` (a
        run's position, as (created_at, id)) and are not leased by anyone: what a run that
        stopped there left for the next one."""
        now = utcnow()
        clauses = [
            TABLE.c.id <= max_id,
            or_(TABLE.c.claim_token.is_(None), TABLE.c.claimed_until <= now),
            *conditions(where),
        ]
        if after is not None:
            clauses.append(tuple_(TABLE.c.created_at, TABLE.c.id) > tuple_(*after))
        return await self._count(*clauses)

    async def _count(self, *clauses: ColumnElement[bool]) -> int:
        """How many rows match every one of ``clauses``."""
        statement = select(func.count()).select_from(TABLE).where(*clauses)
        async with self.db.connection() as conn:
            return int((await conn.execute(statement)).scalar_one())
