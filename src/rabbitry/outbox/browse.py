"""Browsing the ledger: the back-office's "Messages to enqueue" and ``rabbitry outbox list|show|
delete``. One function per action; the page and the command both call them.

Listings are newest first and keyset-paginated: a page is "the next ``limit`` rows after the key
(created_at, id) of the last row shown", answered by walking an index from that key, so the
thousandth page costs what the first does. OFFSET pagination reads and drops every row before
the page instead (``bench/backoffice.py`` measures both at a million rows).

A row is in one of three states: *pending* (``processed`` false: the requeue command and the
relay will send it), *processed* (the broker confirmed it) or *deleted* (soft-deleted by an
operator: it leaves the pending set, so nothing sends it, and stays for the record).

Requeuing from here is :func:`rabbitry.outbox.requeue.requeue`, the code of ``rabbitry
requeue``: for everything pending that matches a filter, or for selected rows (a selected row
that was processed already is made pending again first: an operator's explicit re-send).
Rows an operator's requeue got confirmed get ``requeued_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, or_, select, true, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from rabbitry.errors import StorageError
from rabbitry.messaging.publisher import Publisher
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.ledger import Ledger
from rabbitry.outbox.models import PENDING_CLAUSE, PendingMessage
from rabbitry.outbox.requeue import Progress, RequeueOptions, RequeueReport, RowOutcome, requeue
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

TABLE: Table = PendingMessage.__table__  # type: ignore[assignment]  # declared as FromClause
MAX_PAGE = 500
MAX_SELECTED = 10_000


class State(StrEnum):
    PENDING = "pending"
    PROCESSED = "processed"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """Which rows a listing shows: the requeue filter's queue and dates, and a state (``None``:
    pending and processed, not deleted)."""

    where: RequeueFilter = field(default_factory=RequeueFilter)
    state: State | None = None


@dataclass(frozen=True, slots=True, order=True)
class PageKey:
    """Where a page starts: just after (older than) this row."""

    created_at: dt.datetime
    id: int

    def token(self) -> str:
        """The key as an opaque URL-safe string (``?after=...``)."""
        return f"{self.created_at.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%S.%f')}_{self.id}"

    @classmethod
    def parse(cls, token: str) -> PageKey:
        """The key of :meth:`token`; raises ``ValueError`` for anything else."""
        when, sep, row_id = token.partition("_")
        if not sep or not row_id.isdigit() or len(token) > 64:
            raise ValueError(f"not a page key: {token!r}")
        created = dt.datetime.strptime(when, "%Y%m%dT%H%M%S.%f").replace(tzinfo=dt.UTC)
        return cls(created, int(row_id))


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row as listings show it."""

    id: int
    queue: str
    exchange: str
    routing_key: str
    body: str
    headers: dict[str, Any]
    message_id: str
    created_at: dt.datetime
    processed: bool
    processed_at: dt.datetime | None
    attempts: int
    last_error: str | None
    origin: str
    deleted_at: dt.datetime | None
    requeued_at: dt.datetime | None

    @property
    def state(self) -> State:
        if self.deleted_at is not None:
            return State.DELETED
        return State.PROCESSED if self.processed else State.PENDING

    @property
    def type(self) -> str:
        return str(self.headers.get("rr_job", ""))

    @property
    def key(self) -> PageKey:
        return PageKey(self.created_at, self.id)

    def pretty_body(self) -> str:
        """The body indented when it is JSON, else as stored (never interpreted as markup)."""
        try:
            return json.dumps(json.loads(self.body), indent=2, ensure_ascii=False, sort_keys=True)
        except ValueError:
            return self.body

    def to_json(self) -> dict[str, Any]:
        def when(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "id": self.id,
            "queue": self.queue,
            "state": str(self.state),
            "type": self.type,
            "origin": self.origin,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "message_id": self.message_id,
            "created_at": when(self.created_at),
            "processed_at": when(self.processed_at),
            "requeued_at": when(self.requeued_at),
            "deleted_at": when(self.deleted_at),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "body": self.body,
            "headers": self.headers,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """A page of rows, newest first; ``older`` is the key of the next page, if any."""

    entries: tuple[LedgerEntry, ...]
    older: PageKey | None

    @property
    def next_token(self) -> str | None:
        return None if self.older is None else self.older.token()


_COLUMNS = tuple(TABLE.c[name] for name in LedgerEntry.__dataclass_fields__)


def _entry(values: Any) -> LedgerEntry:
    headers = values.headers
    if isinstance(headers, str):  # a driver that hands JSON back as text
        headers = json.loads(headers)
    return LedgerEntry(**{**values._mapping, "headers": headers})


def conditions(query: LedgerQuery) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``query`` (shared by the listing and the bench)."""
    where = query.where
    found: list[ColumnElement[bool]] = []
    if where.queue is not None:
        found.append(TABLE.c.queue == where.queue)
    if where.since is not None:
        found.append(TABLE.c.created_at >= where.since)
    if where.before is not None:
        found.append(TABLE.c.created_at < where.before)
    if where.origin is not None:
        found.append(TABLE.c.origin == where.origin.value)
    if query.state is State.PENDING:
        found.append(PENDING_CLAUSE)  # the partial indexes' own predicate
    elif query.state is State.PROCESSED:
        found += [TABLE.c.processed == true(), TABLE.c.deleted_at.is_(None)]
    elif query.state is State.DELETED:
        found.append(TABLE.c.deleted_at.is_not(None))
    else:
        found.append(TABLE.c.deleted_at.is_(None))
    return found


def page_statement(query: LedgerQuery, after: PageKey | None, limit: int) -> Select[Any]:
    """Newest first from ``after`` (exclusive); one more row than asked tells if there is more."""
    statement = select(*_COLUMNS).where(*conditions(query))
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


async def list_messages(
    db: Database, query: LedgerQuery, *, after: PageKey | None = None, limit: int = 50
) -> Page:
    """One page of rows matching ``query``, newest first, after the key ``after``."""
    limit = max(1, min(limit, MAX_PAGE))
    async with _connection(db) as conn:
        rows = [_entry(r) for r in await conn.execute(page_statement(query, after, limit))]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(tuple(rows), rows[-1].key if more and rows else None)


async def get_message(db: Database, row_id: int) -> LedgerEntry | None:
    async with _connection(db) as conn:
        found = (await conn.execute(select(*_COLUMNS).where(TABLE.c.id == row_id))).first()
    return _entry(found) if found is not None else None


async def delete_messages(db: Database, ids: Sequence[int]) -> list[int]:
    """Soft-delete rows ``ids``; returns those that were deleted now (not before, existing)."""
    if not ids:
        return []
    statement = (
        update(TABLE)
        .where(TABLE.c.id.in_(sorted(set(ids))), TABLE.c.deleted_at.is_(None))
        .values(deleted_at=utcnow(), processed=True)
        .returning(TABLE.c.id)
    )
    async with _connection(db) as conn:
        return sorted(row.id for row in await conn.execute(statement))


async def pending_count(db: Database, where: RequeueFilter) -> int:
    """How many pending rows match ``where`` (the partial indexes answer it)."""
    return await Ledger(db).count(where)


async def requeue_messages(
    ledger: Ledger,
    publisher: Publisher,
    where: RequeueFilter,
    *,
    exchanges: ExchangeCheck | None = None,
    progress: Progress | None = None,
    options: RequeueOptions = RequeueOptions(),
) -> RequeueReport:
    """Requeue what ``where`` selects, as ``rabbitry requeue`` does (:func:`requeue`).

    With ``where.ids`` (selected rows, at most :data:`MAX_SELECTED`), processed rows among
    them are made pending again first; deleted rows are never sent. Rows the broker confirmed
    get ``requeued_at``.
    """
    if where.ids is not None:
        if len(where.ids) > MAX_SELECTED:
            raise ValueError(f"select at most {MAX_SELECTED} rows")
        await _reopen(ledger.db, where.ids)
    stamping: list[asyncio.Task[None]] = []

    def recorded(outcomes: Sequence[RowOutcome]) -> None:
        published = [o.row.id for o in outcomes if o.published]
        if published:
            stamping.append(asyncio.create_task(_stamp(ledger.db, published)))
        if progress is not None:
            progress(outcomes)

    try:
        return await requeue(
            ledger, publisher, where, options=options, progress=recorded, exchanges=exchanges
        )
    finally:
        await asyncio.gather(*stamping)


async def _reopen(db: Database, ids: frozenset[int]) -> None:
    statement = (
        update(TABLE)
        .where(TABLE.c.id.in_(sorted(ids)), TABLE.c.processed == true())
        .where(TABLE.c.deleted_at.is_(None))
        .values(processed=False, claim_token=None, claimed_until=None)
    )
    async with _connection(db) as conn:
        await conn.execute(statement)


async def _stamp(db: Database, ids: Sequence[int]) -> None:
    statement = update(TABLE).where(TABLE.c.id.in_(ids)).values(requeued_at=utcnow())
    async with _connection(db) as conn:
        await conn.execute(statement)


@contextlib.asynccontextmanager
async def _connection(db: Database) -> AsyncIterator[AsyncConnection]:
    """A Core connection in a transaction; database failures become StorageError."""
    try:
        async with db.engine.begin() as connection:
            yield connection
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc
    except (OSError, TimeoutError) as exc:  # a refused or dropped connection, from the driver
        raise StorageError(f"database unreachable: {exc}") from exc


def selected(ids: Sequence[int]) -> RequeueFilter:
    """The filter of "requeue these rows"."""
    if not ids:
        raise ValueError("no row selected")
    return RequeueFilter(ids=frozenset(ids))
