"""The chat history: the store the persistence workers write and the API reads.

Each message is stored once by its id, however often it is delivered (competing workers,
redeliveries after a crash): inserts skip ids already present. Ids are time-ordered by the
clock of the gateway that stamped them (see :mod:`rabbitry.chat.protocol`): ``page`` walks back
from ``before`` by id, newest first, which is what a person scrolling back expects.

Recovery (``since``) follows the order the store assigns instead. Each stored message gets the
next ``seq``; on PostgreSQL the writers take one transaction lock in turn, so ``seq`` order is
commit order, and a later commit always gets a higher ``seq``. :meth:`ChatHistory.since` reads

* every row whose ``seq`` is above ``seq(since) - REORDER``: what was committed after the
  message the client saw last, whatever the clock of the gateway that stamped it (a gateway
  whose clock runs behind cannot hide its messages), and what was committed a little before it
  (competing workers commit out of send order: a message sent after ``since`` may be committed
  before it, by at most the batches in flight in the other workers);
* and every row stamped after ``since`` that was committed earlier still (a batch of ``since``'s
  retried through the retry queues, or rows stored before ``seq`` existed);

each once, in store order. The window below ``since`` holds messages the client may already
have: a client drops ids it has seen (the page and docs/chat.md's client do), and a gateway
drops those it knows the client saw.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import cast

from sqlalchemy import Table, bindparam, delete, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from rabbitry.chat.models import StoredChatMark, StoredChatMessage
from rabbitry.chat.protocol import ChatMessage
from rabbitry.storage.clock import utcnow
from rabbitry.storage.database import Database

MAX_PAGE = 200
# Rows (of all rooms) a message sent after ``since`` may be committed ahead of it: a message
# waits in one worker's prefetch (twice its batch, 2 x 200) while the other workers commit
# theirs, so (workers - 1) x 400 rows; 2,000 covers six workers at the defaults.
REORDER = 2000


_TABLE = cast(Table, StoredChatMessage.__table__)
_MARKS = cast(Table, StoredChatMark.__table__)
# Marks are read within a minute of being stored; older ones go when the next are stored.
MARK_KEPT = dt.timedelta(hours=1)
# One key for the writers' turn on PostgreSQL (any constant: it names no table).
_ORDER_LOCK = 0x63686174  # "chat"


class ChatHistory:
    """Reads and writes the ``chat_message`` table of ``database``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def store(
        self, messages: Sequence[ChatMessage], marks: Sequence[str] = (), worker: str = ""
    ) -> None:
        """Insert ``messages``, skipping ids already stored, and ``marks`` as stored by
        ``worker`` (see :meth:`marks`); one transaction."""
        if not messages and not marks:
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
            if rows:
                if not self._database.is_sqlite:
                    # Writers in turn, so that seq order is commit order: a reader paging by
                    # seq never passes a seq whose transaction has yet to commit. (SQLite has
                    # one writer at a time anyway.)
                    await session.execute(text(f"SELECT pg_advisory_xact_lock({_ORDER_LOCK})"))
                await session.execute(statement, list(rows.values()))
            if marks:
                # In the batch's transaction: a mark is seen once what came before it in this
                # worker's batch is committed.
                await session.execute(
                    insert(_MARKS)
                    .values(id=bindparam("id"), worker=worker, stored_at=now)
                    .on_conflict_do_nothing(index_elements=["id"]),
                    [{"id": mark} for mark in dict.fromkeys(marks)],
                )
                await session.execute(delete(_MARKS).where(_MARKS.c.stored_at < now - MARK_KEPT))

    async def marks(self, ids: Sequence[str]) -> dict[str, str]:
        """Which of the marks ``ids`` a persistence worker stored, and which worker: a gateway
        publishes them through the history queue after its own queue came back, and once a
        worker stored one, everything routed to the history before it that this worker took
        is stored too (the queue is first in, first out; a worker stores in order)."""
        if not ids:
            return {}
        query = select(_MARKS.c.id, _MARKS.c.worker).where(_MARKS.c.id.in_(list(ids)))
        async with self._database.session() as session:
            return {mark: worker for mark, worker in await session.execute(query)}

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

    async def position(self, tenant: str, room: str, message_id: str) -> int | None:
        """The store's position (``seq``) of a message of the room; None until it is stored
        (or if it was stored before positions existed)."""
        query = select(StoredChatMessage.seq).where(
            StoredChatMessage.id == message_id,
            StoredChatMessage.tenant == tenant,
            StoredChatMessage.room == room,
        )
        async with self._database.session() as session:
            return cast(int | None, await session.scalar(query))

    async def lowest(self, tenant: str, room: str, ids: Sequence[str]) -> int | None:
        """The lowest position among the stored ``ids`` of the room (None: none stored)."""
        if not ids:
            return None
        query = select(func.min(StoredChatMessage.seq)).where(
            StoredChatMessage.tenant == tenant,
            StoredChatMessage.room == room,
            StoredChatMessage.id.in_(list(ids)),
        )
        async with self._database.session() as session:
            return cast(int | None, await session.scalar(query))

    async def top(self) -> int:
        """The highest position the store has given (0 when empty)."""
        query = select(func.coalesce(func.max(StoredChatMessage.seq), 0))
        async with self._database.session() as session:
            return int(await session.scalar(query) or 0)

    async def stored_after(
        self, cursor: int, *, page: int = 500
    ) -> tuple[int, list[tuple[int, ChatMessage]]]:
        """Up to ``page`` messages of every room stored after position ``cursor``, in store
        order, each with its position; and the position to read on from."""
        query = (
            select(StoredChatMessage)
            .where(StoredChatMessage.seq > cursor)
            .order_by(StoredChatMessage.seq)
            .limit(page)
        )
        rows = await self._rows(query)
        found = [(cast(int, row.seq), _message(row)) for row in rows]
        return (found[-1][0] if found else cursor), found

    async def since(
        self,
        tenant: str,
        room: str,
        since: str,
        position: int | None,
        *,
        page: int = 500,
        reorder: int = REORDER,
        seen_from: int | None = None,
        oldest: str | None = None,
    ) -> AsyncIterator[list[ChatMessage]]:
        """What a client that saw ``since`` (stored at ``position``) may have missed, page by
        page in store order, each message once (``since`` itself left out).

        ``position`` None (``since`` is not stored): the messages stamped after ``since``,
        in id order, as the gateways' clocks tell it. A page is read when the previous one is
        taken, so a gap of any size goes at its reader's pace; rows committed meanwhile are
        read too (a later commit always sorts later).

        ``seen_from``, ``oldest``: the reader has seen every message stored from ``seen_from``
        to ``position`` and sent no earlier than ``oldest`` (it knows which: a room's recent
        deliveries), so the window need not reach below ``seen_from``, and what the window
        holds that was stamped before ``oldest`` was delivered before those."""
        room_rows = (StoredChatMessage.tenant == tenant, StoredChatMessage.room == room)
        floor = None if position is None else position - reorder
        if position is not None and floor is not None and seen_from is not None:
            floor = max(floor, min(seen_from, position) - 1)
        # First the rows stamped after ``since`` but committed before the window (or never
        # given a position): few, unless a batch of ``since``'s was retried much later.
        early = select(StoredChatMessage).where(*room_rows, StoredChatMessage.id > since)
        if floor is not None:
            early = early.where(
                or_(StoredChatMessage.seq.is_(None), StoredChatMessage.seq <= floor)
            )
        after = since
        while rows := await self._fetch(
            early.where(StoredChatMessage.id > after).order_by(StoredChatMessage.id).limit(page)
        ):
            yield rows
            after = rows[-1].id
        if floor is None:
            return
        # Then everything committed from the window on, in commit order.
        cursor = floor
        window = select(StoredChatMessage).where(*room_rows)
        if oldest is not None:
            window = window.where(
                or_(StoredChatMessage.seq >= position, StoredChatMessage.id >= oldest)
            )
        while stored := await self._rows(
            window.where(StoredChatMessage.seq > cursor).order_by(StoredChatMessage.seq).limit(page)
        ):
            cursor = cast(int, stored[-1].seq)
            if found := [_message(row) for row in stored if row.id != since]:
                yield found

    async def _fetch(self, query: object) -> list[ChatMessage]:
        return [_message(row) for row in await self._rows(query)]

    async def _rows(self, query: object) -> Sequence[StoredChatMessage]:
        async with self._database.session() as session:
            return (await session.scalars(query)).all()  # type: ignore[call-overload,no-any-return]


def _message(row: StoredChatMessage) -> ChatMessage:
    return ChatMessage(row.id, row.tenant, row.room, row.sender, row.text, row.sent_at)
