"""The chat part's back-office entity page: rooms, per tenant, with their message counts."""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select

from rabbitry.chat.models import StoredChatMessage
from rabbitry.storage import Database
from rabbitry.storage.listing import MAX_SEARCH, Listing, Record, Row, iso, listing, one_page_more

ROOM_ENTITY = "rabbitry.chat.Room"


class RoomPages:
    kind: str = "rooms"
    title: str = "Chat rooms"
    label: str = "Chat rooms"
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
        found = await one_page_more(db, query, limit)
        rows = [Row(f"{t}:{r}", ROOM_ENTITY, (t, r, n, last)) for t, r, n, last in found]
        return listing(rows, limit)

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
        fields = {"tenant": tenant, "room": room, "messages": count, "last_message_at": iso(last)}
        return Record(self.kind, ROOM_ENTITY, key, fields, tenant=tenant)
