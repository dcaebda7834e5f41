"""The session store in the SQL database (the default when no MongoDB is configured).

One table for every tenant, with the tenant in every key and every ``WHERE``: the
``(tenant, user_id)`` index serves DISPATCH's "sessions of this user", the unique token hash
serves validation. Expired rows are filtered on read and swept from time to time on login.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Executable, delete, select

from rabbitry.sessions.models import StoredSession
from rabbitry.sessions.store import BeforeCommit, SessionRecord
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

# Sweep a tenant's expired rows on one login in this many: cheap (the expiry index), and often
# enough that the table holds roughly the live sessions.
SWEEP_EVERY = 64


class SqlSessionStore:
    """A :class:`~rabbitry.sessions.store.SessionStore` on a :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._adds = 0

    async def prepare(self, tenant: str) -> None:
        return None  # one table, created by the migration

    async def add(self, record: SessionRecord) -> None:
        self._adds += 1
        async with self._db.session() as session:
            session.add(_row(record))
            if self._adds % SWEEP_EVERY == 0:
                await session.execute(
                    delete(StoredSession).where(
                        StoredSession.tenant == record.tenant,
                        StoredSession.expires_at <= utcnow(),
                    )
                )

    async def by_token(self, tenant: str, token_hash: str) -> SessionRecord | None:
        return await self._one(
            StoredSession.tenant == tenant, StoredSession.token_hash == token_hash
        )

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        return await self._one(StoredSession.tenant == tenant, StoredSession.id == session_id)

    async def of_user(self, tenant: str, user_id: int) -> list[SessionRecord]:
        query = (
            select(StoredSession)
            .where(
                StoredSession.tenant == tenant,
                StoredSession.user_id == user_id,
                StoredSession.expires_at > utcnow(),
            )
            .order_by(StoredSession.created_at, StoredSession.id)
        )
        return await self._records(query)

    async def get_many(self, tenant: str, session_ids: Sequence[str]) -> list[SessionRecord]:
        if not session_ids:
            return []
        query = select(StoredSession).where(
            StoredSession.tenant == tenant, StoredSession.id.in_(list(set(session_ids)))
        )
        return await self._records(query)

    async def remove(
        self, tenant: str, session_ids: Sequence[str], *, before_commit: BeforeCommit | None = None
    ) -> list[SessionRecord]:
        if not session_ids:
            return []
        ids = list(dict.fromkeys(session_ids))
        statement = (
            delete(StoredSession)
            .where(StoredSession.tenant == tenant, StoredSession.id.in_(ids))
            .returning(StoredSession)
        )
        # One transaction: the rows are deleted (and locked), handed over, then committed.
        async with self._db.session() as session:
            records = [_record(row) for row in (await session.scalars(statement)).all()]
            if before_commit is not None and records:
                await before_commit(records)
        return records

    async def close(self) -> None:
        return None  # the database belongs to the caller

    async def _records(self, statement: Executable) -> list[SessionRecord]:
        # Built before the session commits, as the rows of a DELETE ... RETURNING must be.
        async with self._db.session() as session:
            rows = (await session.scalars(statement)).all()
            return [_record(row) for row in rows]

    async def _one(self, *where: object) -> SessionRecord | None:
        query = select(StoredSession).where(*where, StoredSession.expires_at > utcnow())  # type: ignore[arg-type]
        async with self._db.session() as session:
            row = (await session.scalars(query)).first()
        return None if row is None else _record(row)


def _row(record: SessionRecord) -> StoredSession:
    return StoredSession(
        id=record.id,
        tenant=record.tenant,
        user_id=record.user_id,
        username=record.username,
        token_hash=record.token_hash,
        created_at=record.created_at,
        expires_at=record.expires_at,
    )


def _record(row: StoredSession) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        tenant=row.tenant,
        user_id=row.user_id,
        username=row.username,
        token_hash=row.token_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )
