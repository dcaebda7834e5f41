"""The events part's back-office entity page: every event-sourced entity, by name and id."""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select

from rabbitry.events.models import StoredEvent
from rabbitry.events.store import EventStore
from rabbitry.storage import Database
from rabbitry.storage.listing import (
    MAX_SEARCH,
    Listing,
    Record,
    Row,
    int64,
    listing,
    one_page_more,
)


class EventSourcedPages:
    kind: str = "entities"
    title: str = "Event-sourced entities"
    label: str = "Event-sourced"
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
        found = await one_page_more(db, query, limit)
        rows = [
            Row(f"{name}:{i}", name, (name, i, version, last), history=(name, i))
            for name, i, version, last in found
        ]
        return listing(rows, limit)

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
