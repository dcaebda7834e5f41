"""The entity pages' data (the list pages): tenants, users per tenant, chat rooms and
event-sourced entities, read from the owning parts' tables with search and keyset pages.

Each kind is a :class:`Source`: a page of rows (``after`` the key of the last one shown, so
deep pages cost what the first does), and the :class:`~rabbitry.backoffice.records.Record` of
one row, which is what the ▶ action sends. A row's classname picks the registry queues its ▶
modal offers: ``rabbitry.sessions.Tenant``, ``rabbitry.sessions.User``, ``rabbitry.chat.Room``,
and for an event-sourced entity its own entity name (``App\\Models\\Customer``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, TypeVarTuple

from sqlalchemy import Row as SqlRow
from sqlalchemy import Select, and_, func, or_, select

from rabbitry.backoffice.records import Record
from rabbitry.chat.history import StoredChatMessage
from rabbitry.events.models import StoredEvent
from rabbitry.events.store import EventStore
from rabbitry.sessions.models import Tenant, User
from rabbitry.sessions.removal import USER_ENTITY
from rabbitry.storage import Database

TENANT_ENTITY = "rabbitry.sessions.Tenant"
ROOM_ENTITY = "rabbitry.chat.Room"
MAX_SEARCH = 100
M = TypeVar("M")
Ts = TypeVarTuple("Ts")


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


class Source(Protocol):
    kind: str
    title: str
    columns: tuple[str, ...]
    tenant_filter: bool

    async def page(
        self, db: Database, search: str, tenant: str, after: str | None, limit: int
    ) -> Listing: ...

    async def record(self, db: Database, key: str) -> Record | None: ...


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _listing(rows: Sequence[Row], limit: int) -> Listing:
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


def _int_key(text: str | None) -> int | None:
    value = int64(text)
    return value if value is not None and value >= 0 else None


async def _one_page_more(db: Database, query: Select[*Ts], limit: int) -> Sequence[SqlRow[*Ts]]:
    """The rows of a page and one more: :func:`_listing` tells by it whether a next page is."""
    async with db.session() as session:
        return (await session.execute(query.limit(limit + 1))).all()


async def _by_id(db: Database, model: type[M], key: str) -> M | None:
    """The row of ``model`` whose integer primary key ``key`` names, if it is one."""
    if (ident := _int_key(key)) is None:
        return None
    async with db.session() as session:
        return await session.get(model, ident)


class Tenants:
    kind: str = "tenants"
    title: str = "Tenants"
    columns: tuple[str, ...] = ("id", "name", "created")
    tenant_filter: bool = False

    async def page(
        self, db: Database, search: str, tenant: str, after: str | None, limit: int
    ) -> Listing:
        query = select(Tenant.id, Tenant.name, Tenant.created_at).order_by(Tenant.id)
        if search:
            query = query.where(Tenant.name.contains(search[:MAX_SEARCH], autoescape=True))
        if (start := _int_key(after)) is not None:
            query = query.where(Tenant.id > start)
        found = await _one_page_more(db, query, limit)
        rows = [Row(str(i), TENANT_ENTITY, (i, name, created)) for i, name, created in found]
        return _listing(rows, limit)

    async def record(self, db: Database, key: str) -> Record | None:
        row = await _by_id(db, Tenant, key)
        if row is None:
            return None
        fields = {"id": row.id, "name": row.name, "created_at": _iso(row.created_at)}
        return Record(
            self.kind,
            TENANT_ENTITY,
            key,
            fields,
            entity_id=row.id,
            change_data={"name": row.name},
            tenant=row.name,
        )


class Users:
    kind: str = "users"
    title: str = "Users"
    columns: tuple[str, ...] = ("id", "tenant", "username", "created")
    tenant_filter: bool = True

    async def page(
        self, db: Database, search: str, tenant: str, after: str | None, limit: int
    ) -> Listing:
        query = select(User.id, User.tenant, User.username, User.created_at).order_by(User.id)
        if tenant:
            query = query.where(User.tenant == tenant)
        if search:
            query = query.where(User.username.contains(search[:MAX_SEARCH], autoescape=True))
        if (start := _int_key(after)) is not None:
            query = query.where(User.id > start)
        found = await _one_page_more(db, query, limit)
        rows = [
            Row(str(i), USER_ENTITY, (i, t, name, created), history=(USER_ENTITY, i))
            for i, t, name, created in found
        ]
        return _listing(rows, limit)

    async def record(self, db: Database, key: str) -> Record | None:
        row = await _by_id(db, User, key)
        if row is None:
            return None
        fields = {
            "id": row.id,
            "user_id": row.id,  # what a removal request names it
            "tenant": row.tenant,
            "username": row.username,
            "created_at": _iso(row.created_at),
        }
        return Record(
            self.kind,
            USER_ENTITY,
            key,
            fields,
            entity_id=row.id,
            change_data={"tenant": row.tenant, "username": row.username},
            tenant=row.tenant,
        )


class Rooms:
    kind: str = "rooms"
    title: str = "Chat rooms"
    columns: tuple[str, ...] = ("tenant", "room", "messages", "last message")
    tenant_filter: bool = True

    async def page(
        self, db: Database, search: str, tenant: str, after: str | None, limit: int
    ) -> Listing:
        m = StoredChatMessage
        query = (
            select(m.tenant, m.room, func.count(), func.max(m.sent_at))
            .group_by(m.tenant, m.room)
            .order_by(m.tenant, m.room)
        )
        if tenant:
            query = query.where(m.tenant == tenant)
        if search:
            query = query.where(m.room.contains(search[:MAX_SEARCH], autoescape=True))
        if after and ":" in after:
            t, _, r = after.partition(":")
            query = query.where(or_(m.tenant > t, and_(m.tenant == t, m.room > r)))
        found = await _one_page_more(db, query, limit)
        rows = [Row(f"{t}:{r}", ROOM_ENTITY, (t, r, n, last)) for t, r, n, last in found]
        return _listing(rows, limit)

    async def record(self, db: Database, key: str) -> Record | None:
        tenant, sep, room = key.partition(":")
        if not sep:
            return None
        m = StoredChatMessage
        query = select(func.count(), func.max(m.sent_at)).where(m.tenant == tenant, m.room == room)
        async with db.session() as session:
            count, last = (await session.execute(query)).one()
        if not count:
            return None
        fields = {"tenant": tenant, "room": room, "messages": count, "last_message_at": _iso(last)}
        return Record(self.kind, ROOM_ENTITY, key, fields, tenant=tenant)


class EventSourced:
    kind: str = "entities"
    title: str = "Event-sourced entities"
    columns: tuple[str, ...] = ("entity", "id", "version", "last change")
    tenant_filter: bool = False

    async def page(
        self, db: Database, search: str, tenant: str, after: str | None, limit: int
    ) -> Listing:
        e = StoredEvent
        query = (
            select(e.entity, e.entity_id, func.max(e.version), func.max(e.occurred_at))
            .group_by(e.entity, e.entity_id)
            .order_by(e.entity, e.entity_id)
        )
        if search:
            query = query.where(e.entity.contains(search[:MAX_SEARCH], autoescape=True))
        if after and (split := _entity_key(after)) is not None:
            entity, entity_id = split
            query = query.where(
                or_(e.entity > entity, and_(e.entity == entity, e.entity_id > entity_id))
            )
        found = await _one_page_more(db, query, limit)
        rows = [
            Row(f"{name}:{i}", name, (name, i, version, last), history=(name, i))
            for name, i, version, last in found
        ]
        return _listing(rows, limit)

    async def record(self, db: Database, key: str) -> Record | None:
        split = _entity_key(key)
        if split is None:
            return None
        entity, entity_id = split
        state = await EventStore(db).state(entity, entity_id)
        if state is None:
            return None
        fields = state.to_json()
        return Record(
            self.kind, entity, key, fields, entity_id=entity_id, change_data=dict(state.data)
        )


def _entity_key(key: str) -> tuple[str, int] | None:
    entity, sep, number = key.rpartition(":")
    value = int64(number)
    if not sep or not entity or value is None:
        return None
    return entity, value


SOURCES: dict[str, Source] = {
    source.kind: source for source in (Tenants(), Users(), Rooms(), EventSourced())
}
