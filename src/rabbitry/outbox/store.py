"""The outbox's one store: every read and write of ``outbox_messages``.

:class:`Outbox` is the publisher's :class:`~rabbitry.messaging.publisher.Fallback`: it stores
(route, message, reason) with ``processed=false``, and raises :class:`StorageError` when it
cannot (the publisher lets that reach the caller: never a silent loss). It also answers the
requeue run, the relay, the change tracker, the back-office and ``rabbitry outbox``:

* the requeue run and the relay lease, renew, settle and release rows through it: it is a
  :class:`~rabbitry.outbox.leases.Leases`, where the fencing of runs is told. A failed row
  backs off (:mod:`rabbitry.outbox.backoff`); a refusal (no such exchange, unroutable) far
  longer than an outage: waiting does not cure it, and a row retried every few seconds forever
  only fills the log.
* :meth:`Outbox.stage` writes rows on a caller's own connection, inside its transaction, leased
  to the caller until it settles them (the SQLAlchemy change tracker's outbox delivery).
* :meth:`Outbox.page` lists messages newest first, keyset-paginated
  (:func:`~rabbitry.outbox.queries.page_statement`).

Rows are plain :class:`~rabbitry.outbox.message.OutboxMessage` values built from Core
statements: a run over a million rows holds one batch in memory, never an ORM identity map.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select, true, update

from rabbitry.errors import MessageError, StorageError
from rabbitry.messaging.envelope import Message, encode_headers
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.backoff import MAX_BACKOFF as MAX_BACKOFF
from rabbitry.outbox.backoff import MAX_REFUSED_BACKOFF as MAX_REFUSED_BACKOFF
from rabbitry.outbox.backoff import REFUSED_FIRST_BACKOFF as REFUSED_FIRST_BACKOFF
from rabbitry.outbox.backoff import backoff as backoff
from rabbitry.outbox.codec import headers_to_json
from rabbitry.outbox.filters import Failure, Origin, RequeueFilter
from rabbitry.outbox.leases import Cursor as Cursor
from rabbitry.outbox.leases import Leases
from rabbitry.outbox.message import OutboxMessage, OutboxQuery, Page, PageKey, State
from rabbitry.outbox.models import PENDING_CLAUSE
from rabbitry.outbox.owners import file_ad_hoc, label_ad_hoc, owners_query
from rabbitry.outbox.queries import COLUMNS, TABLE, conditions, message_of
from rabbitry.outbox.queries import page_statement as page_statement
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

# The `X as X` imports re-export what callers (tests, the bench) import from here, though it
# lives in the modules this one was split into.

MAX_PAGE = 500


class Outbox(Leases):
    """The messages in ``outbox_messages``. Satisfies the publisher's ``Fallback`` protocol."""

    def __init__(self, db: Database, *, origin: Origin = Origin.CONTINGENCY) -> None:
        super().__init__(db)
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
            await label_ad_hoc(conn, values)
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
        owners = owners_query(values)
        if owners is not None:
            file_ad_hoc(values, connection.execute(owners).all())
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
            found = (await conn.execute(select(*COLUMNS).where(TABLE.c.id == row_id))).first()
        return message_of(found) if found is not None else None

    async def count(self, where: RequeueFilter, *, state: State | None = State.PENDING) -> int:
        """How many rows in ``state`` match ``where`` (for pending ones, the partial indexes
        answer it)."""
        return await self._count(*conditions(where, state))

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
        statement = select(*COLUMNS).where(*conditions(where, state))
        statement = statement.order_by(*(c.desc() for c in order) if newest_first else order)
        async with self.db.connection() as conn:
            result = await conn.execute(statement.limit(limit).offset(offset))
            return [message_of(r) for r in result]

    async def page(
        self, query: OutboxQuery, *, after: PageKey | None = None, limit: int = 50
    ) -> Page:
        """One page of rows matching ``query``, newest first, after the key ``after``."""
        limit = max(1, min(limit, MAX_PAGE))
        async with self.db.connection() as conn:
            found = [message_of(r) for r in await conn.execute(page_statement(query, after, limit))]
        more = len(found) > limit
        found = found[:limit]
        return Page(tuple(found), found[-1].key if more and found else None)
