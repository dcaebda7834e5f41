"""Logouts every back-office process honours: the session ids logged out before their cookie
expired, kept in the database (``backoffice_logouts``) until it would have.

A cookie is stateless (signed, see :mod:`rabbitry.backoffice.auth`), so any process with the
admin token accepts it; a logout therefore has to reach all of them, or a copy of the cookie
keeps working on the replicas that did not serve it. Each process also remembers the logouts it
has seen (:class:`~rabbitry.backoffice.auth.Revoked`), so a replayed cookie costs one lookup.
Only a SHA-256 of the id is stored: the table says nothing usable about a live session.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from rabbitry.backoffice.auth import Revoked, Session
from rabbitry.backoffice.models import LogoutRecord
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow


def fingerprint(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Logouts:
    """The logged-out sessions of every back-office process on ``database``."""

    def __init__(self, database: Database, seen: Revoked | None = None) -> None:
        self._database = database
        self._seen = seen if seen is not None else Revoked()

    async def add(self, session: Session) -> None:
        """Log ``session`` out everywhere (idempotent), and forget logouts that expired."""
        self._seen.add(session)
        expires = dt.datetime.fromtimestamp(session.expires, dt.UTC)
        row = {"sid_hash": fingerprint(session.sid), "expires_at": expires}
        insert = sqlite_insert if self._database.is_sqlite else pg_insert
        async with self._database.session() as db:
            await db.execute(
                insert(LogoutRecord).values(row).on_conflict_do_nothing(index_elements=["sid_hash"])
            )
            await db.execute(delete(LogoutRecord).where(LogoutRecord.expires_at < utcnow()))

    async def holds(self, sid: str) -> bool:
        """Whether the session ``sid`` was logged out (by any process)."""
        if sid in self._seen:
            return True
        async with self._database.session() as db:
            found = await db.scalar(
                select(LogoutRecord.expires_at).where(LogoutRecord.sid_hash == fingerprint(sid))
            )
        return found is not None
