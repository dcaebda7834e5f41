"""The sessions part's back-office entity pages: tenants, and users per tenant."""

from __future__ import annotations

from sqlalchemy import select

from rabbitry.sessions.models import Tenant, User
from rabbitry.sessions.removal import USER_ENTITY
from rabbitry.storage import Database
from rabbitry.storage.listing import (
    MAX_SEARCH,
    Listing,
    Record,
    Row,
    by_id,
    int_key,
    iso,
    listing,
    one_page_more,
)

TENANT_ENTITY = "rabbitry.sessions.Tenant"


class TenantPages:
    kind: str = "tenants"
    title: str = "Tenants"
    label: str = "Tenants"
    columns: tuple[str, ...] = ("id", "name", "created")
    tenant_filter: bool = False

    async def page(
        self, db: Database, search: str, tenant: str, after: str | None, limit: int
    ) -> Listing:
        query = select(Tenant.id, Tenant.name, Tenant.created_at).order_by(Tenant.id)
        if search:
            query = query.where(Tenant.name.contains(search[:MAX_SEARCH], autoescape=True))
        if (start := int_key(after)) is not None:
            query = query.where(Tenant.id > start)
        found = await one_page_more(db, query, limit)
        rows = [Row(str(i), TENANT_ENTITY, (i, name, created)) for i, name, created in found]
        return listing(rows, limit)

    async def record(self, db: Database, key: str) -> Record | None:
        row = await by_id(db, Tenant, key)
        if row is None:
            return None
        fields = {"id": row.id, "name": row.name, "created_at": iso(row.created_at)}
        return Record(
            self.kind,
            TENANT_ENTITY,
            key,
            fields,
            entity_id=row.id,
            change_data={"name": row.name},
            tenant=row.name,
        )


class UserPages:
    kind: str = "users"
    title: str = "Users"
    label: str = "Users"
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
        if (start := int_key(after)) is not None:
            query = query.where(User.id > start)
        found = await one_page_more(db, query, limit)
        rows = [
            Row(str(i), USER_ENTITY, (i, t, name, created), history=(USER_ENTITY, i))
            for i, t, name, created in found
        ]
        return listing(rows, limit)

    async def record(self, db: Database, key: str) -> Record | None:
        row = await by_id(db, User, key)
        if row is None:
            return None
        fields = {
            "id": row.id,
            "user_id": row.id,  # what a removal request names it
            "tenant": row.tenant,
            "username": row.username,
            "created_at": iso(row.created_at),
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
