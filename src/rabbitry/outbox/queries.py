"""The outbox's queries: a filter turned into WHERE clauses, a page into a statement, a result
row into an :class:`~rabbitry.outbox.message.OutboxMessage`. Builds SQLAlchemy Core statements;
runs none.

:func:`page_statement` is keyset pagination: a page is "the next ``limit`` rows after the key
(created_at, id) of the last row shown", answered by walking an index from that key, so the
thousandth page costs what the first does (OFFSET pagination reads and drops every row before
the page instead: ``bench/backoffice.py`` measures both).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, or_, select, true

from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.message import OutboxMessage, OutboxQuery, PageKey, State
from rabbitry.outbox.models import PENDING_CLAUSE, OutboxMessageRecord

TABLE: Table = OutboxMessageRecord.__table__  # type: ignore[assignment]  # declared as FromClause

COLUMNS = tuple(TABLE.c[name] for name in OutboxMessage.__dataclass_fields__)
"""The columns of an :class:`~rabbitry.outbox.message.OutboxMessage`, in its fields' order."""


def message_of(values: Any) -> OutboxMessage:
    """The message of a result row selected or returned as :data:`COLUMNS`."""
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
    statement = select(*COLUMNS).where(*conditions(query.where, query.state))
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
