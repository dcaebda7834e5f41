"""What a part shows of its tables on the back-office's entity pages, and the helpers to page
them by key.

A part with rows an operator may send by hand (the ▶ action) lists them through an
:class:`EntityPages` in its registry entry: a page of :class:`Row` values (``after`` the key of
the last one shown, so that deep pages cost what the first does), and the :class:`Record` of one
row, which is what ▶ sends. The back-office names no part: it shows the pages it is given.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, TypeVarTuple

from sqlalchemy import Row as SqlRow
from sqlalchemy import Select

from rabbitry.storage.database import Database

MAX_SEARCH = 100
M = TypeVar("M")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class Record:
    """One row of an entity page, as it is sent: its classname, key and fields."""

    kind: str
    classname: str
    key: str
    fields: Mapping[str, Any]
    entity_id: int | None = None  # what a change event of it names as "id"
    change_data: Mapping[str, Any] = field(default_factory=dict)  # its "data"
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    classname: str
    cells: tuple[Any, ...]
    history: tuple[str, int] | None = None  # (entity, id) whose event history exists


@dataclass(frozen=True, slots=True)
class Listing:
    rows: tuple[Row, ...]
    after: str | None  # key of the next page


class EntityPages(Protocol):
    """One kind of row a part lists (``/backoffice/entities/<kind>``)."""

    kind: str
    title: str
    label: str  # the navigation's name for it
    columns: tuple[str, ...]
    tenant_filter: bool

    async def page(
        self, db: Database, search: str, tenant: str, after: str | None, limit: int
    ) -> Listing: ...

    async def record(self, db: Database, key: str) -> Record | None: ...


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def listing(rows: Sequence[Row], limit: int) -> Listing:
    """The page of ``rows`` (fetched with one more than ``limit``: that one says a next page
    exists)."""
    more = len(rows) > limit
    shown = tuple(rows[:limit])
    return Listing(shown, shown[-1].key if more and shown else None)


INT64_MAX = 2**63 - 1  # every id column is a BIGINT: past it, SQLite raises OverflowError


def int64(text: str | None) -> int | None:
    """``text`` as a signed 64-bit integer (ASCII digits, an optional '-'), or ``None``."""
    if text is None or len(text) > 20 or not text.removeprefix("-").isascii():
        return None
    if not text.removeprefix("-").isdigit():
        return None
    value = int(text)
    return value if -INT64_MAX - 1 <= value <= INT64_MAX else None


def int_key(text: str | None) -> int | None:
    """The integer key ``text`` names, if it is one (non-negative, no overflow past 64 bits)."""
    value = int64(text)
    return value if value is not None and value >= 0 else None


async def one_page_more(db: Database, query: Select[*Ts], limit: int) -> Sequence[SqlRow[*Ts]]:
    """The rows of a page and one more: :func:`listing` tells by it whether a next page is."""
    async with db.session() as session:
        return (await session.execute(query.limit(limit + 1))).all()


async def by_id(db: Database, model: type[M], key: str) -> M | None:
    """The row of ``model`` whose integer primary key ``key`` names, if it is one."""
    if (ident := int_key(key)) is None:
        return None
    async with db.session() as session:
        return await session.get(model, ident)
