"""The module message log: what the workflow module heard on the modules exchange, each message
once, with the exchange and routing key the broker delivered it with."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from rabbitry.errors import MessageError
from rabbitry.events.models import MessageLogEntry
from rabbitry.events.writes import in_session, split_refused, with_retry
from rabbitry.messaging.envelope import Message
from rabbitry.storage.database import Database

_LOG = cast(Table, MessageLogEntry.__table__)


class MessageLog:
    """What the workflow module heard on the modules exchange, each message once, with the
    exchange and routing key the broker delivered it with."""

    def __init__(self, database: Database, *, max_attempts: int = 30) -> None:
        self._db = database
        self._max_attempts = max_attempts

    async def append(self, messages: Sequence[Message]) -> int:
        """Log ``messages``; returns how many were new."""
        if not messages:
            return 0
        return await with_retry(
            self._max_attempts, lambda: in_session(self._db, lambda s: self._append(s, messages))
        )

    async def append_each(self, messages: Sequence[Message]) -> list[MessageError | None]:
        """Log ``messages``; ``None`` for each logged (or logged before), a
        :class:`MessageError` for each the database refused (see :func:`split_refused`)."""

        async def log(part: Sequence[Message]) -> list[None]:
            await self.append(part)
            return [None] * len(part)

        return await split_refused(messages, log)

    async def _append(self, session: AsyncSession, messages: Sequence[Message]) -> int:
        now = dt.datetime.now(dt.UTC)
        values: dict[str, dict[str, Any]] = {}
        for message in messages:
            values.setdefault(  # a repeat within the batch: the first one
                message.id,
                {
                    "message_id": message.id,
                    "type": message.type[:255],
                    "tenant": message.tenant,
                    "exchange": message.exchange,
                    "routing_key": message.routing_key,
                    "payload": message.payload,
                    "headers": {k: list(v) for k, v in message.headers.items()},
                    "occurred_at": message.timestamp,
                    "recorded_at": now,
                },
            )
        # No version to number here: the unique index itself drops a message logged before
        # (no lookup first, which PostgreSQL may plan as a scan of the whole log).
        insert = sqlite_insert if self._db.is_sqlite else postgresql_insert
        statement = (
            insert(_LOG)
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(_LOG.c.message_id)
        )
        return len((await session.execute(statement, list(values.values()))).all())

    async def recent(self, limit: int = 100) -> list[MessageLogEntry]:
        """The last ``limit`` logged messages, newest first (each with its type, tenant,
        ``exchange``, ``routing_key``, payload, headers and times)."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(MessageLogEntry).order_by(MessageLogEntry.sequence.desc()).limit(limit)
            )
            return list(rows)
