"""The chat history: the store the persistence workers write and the API reads.

Each message is stored once by its id, however often it is delivered (competing workers,
redeliveries after a crash): inserts skip ids already present. Ids are time-ordered (see
:mod:`rabbitry.chat.protocol`), so pages and recovery order by id: ``page`` walks back from
``before``, newest first; ``after`` walks forward from the last id a client saw.

Recovery (``after``) follows the order the store assigns instead: each stored message gets the
next ``seq``, and on PostgreSQL the writers take one transaction lock in turn, so ``seq`` order
is commit order. A message stored after the one a client saw last comes after it, whatever the
clock of the gateway that stamped its id: a gateway whose clock runs behind cannot hide its
messages from ``since``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from rabbitry.chat.models import StoredChatMessage
from rabbitry.chat.protocol import ChatMessage
from rabbitry.storage.clock import utcnow
from rabbitry.storage.database import Database

MAX_PAGE = 200


_TABLE = cast(Table, StoredChatMessage.__table__)
# One key for the writers' turn on PostgreSQL (any constant: it names no table).
_ORDER_LOCK = 0x63686174  # "chat"


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
            for m in sorted(messages, key=lambda m: m.id)
        }
        # Row k takes (the highest seq it sees) + 1 + k: distinct and growing whether the
        # rows go in one statement (one snapshot) or one by one (each sees those before);
        # a skipped repeat leaves a gap, which is harmless.
        for offset, row in enumerate(rows.values()):
            row["offset"] = offset
        top = select(func.coalesce(func.max(StoredChatMessage.seq), 0) + 1).scalar_subquery()
        insert = pg_insert if not self._database.is_sqlite else sqlite_insert
        statement = (
            insert(_TABLE)
            .values(
                id=bindparam("id"),
                tenant=bindparam("tenant"),
                room=bindparam("room"),
                sender=bindparam("sender"),
                text=bindparam("text"),
                sent_at=bindparam("sent_at"),
                stored_at=bindparam("stored_at"),
                seq=top + bindparam("offset"),
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        async with self._database.session() as session:
            if not self._database.is_sqlite:
                # Writers in turn, so that seq order is commit order: a reader paging by seq
                # never passes a seq whose transaction has yet to commit. (SQLite has one
                # writer at a time anyway.)
                await session.execute(text(f"SELECT pg_advisory_xact_lock({_ORDER_LOCK})"))
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
        """Up to ``limit`` messages with an id later than ``since``, in id order.

        Id order, not ``seq`` (commit) order: competing persistence workers commit out of send
        order, so a message sent after ``since`` may be committed before it, and a reader
        anchored on ``since``'s commit position would never see it."""
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
