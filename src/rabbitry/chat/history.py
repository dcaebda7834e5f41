"""The chat history: the store the persistence workers write and the API reads.

Each message is stored once by its id, however often it is delivered (competing workers,
redeliveries after a crash): inserts skip ids already present. Ids are time-ordered (see
:mod:`rabbitry.chat.protocol`), so pages and recovery order by id: ``page`` walks back from
``before``, newest first; ``after`` walks forward from the last id a client saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from rabbitry.chat.models import StoredChatMessage
from rabbitry.chat.protocol import ChatMessage
from rabbitry.storage.clock import utcnow
from rabbitry.storage.database import Database

MAX_PAGE = 200


_TABLE = cast(Table, StoredChatMessage.__table__)


class ChatHistory:
    """Reads and writes the ``chat_message`` table of ``database``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def store(self, messages: Sequence[ChatMessage]) -> None:
        """Insert ``messages``, skipping ids already stored; one transaction."""
        if not messages:
            return
        now = utcnow()
        rows = {
            m.id: {
                "id": m.id,
                "tenant": m.tenant,
                "room": m.room,
                "sender": m.sender,
                "text": m.text,
                "sent_at": m.sent_at,
                "stored_at": now,
            }
            for m in messages
        }
        insert = pg_insert if not self._database.is_sqlite else sqlite_insert
        statement = insert(_TABLE).on_conflict_do_nothing(index_elements=["id"])
        async with self._database.session() as session:
            await session.execute(statement, list(rows.values()))

    async def page(
        self, tenant: str, room: str, *, limit: int = 50, before: str | None = None
    ) -> list[ChatMessage]:
        """Up to ``limit`` messages older than ``before`` (or the newest), newest first."""
        query = select(StoredChatMessage).where(
            StoredChatMessage.tenant == tenant, StoredChatMessage.room == room
        )
        if before is not None:
            query = query.where(StoredChatMessage.id < before)
        query = query.order_by(StoredChatMessage.id.desc()).limit(min(limit, MAX_PAGE))
        return await self._fetch(query)

    async def after(
        self, tenant: str, room: str, since: str, *, limit: int = 1000
    ) -> list[ChatMessage]:
        """Up to ``limit`` messages newer than ``since``, oldest first."""
        query = (
            select(StoredChatMessage)
            .where(
                StoredChatMessage.tenant == tenant,
                StoredChatMessage.room == room,
                StoredChatMessage.id > since,
            )
            .order_by(StoredChatMessage.id)
            .limit(limit)
        )
        return await self._fetch(query)

    async def _fetch(self, query: object) -> list[ChatMessage]:
        async with self._database.session() as session:
            rows = (await session.scalars(query)).all()  # type: ignore[call-overload]
        return [_message(row) for row in rows]


def _message(row: StoredChatMessage) -> ChatMessage:
    return ChatMessage(row.id, row.tenant, row.room, row.sender, row.text, row.sent_at)
