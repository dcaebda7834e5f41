"""What SESSION and DISPATCH need of a session store, whatever holds the documents.

Two implementations behind one protocol: :class:`~rabbitry.sessions.sql_store.SqlSessionStore`
(the default: the SQL database every Rabbitry process has) and
:class:`~rabbitry.sessions.mongo_store.MongoSessionStore` (``RABBITRY_MONGODB_URL``: one collection
per tenant). Every method takes the tenant first and never looks outside it: that is where
tenant isolation holds for sessions. An expired session is never returned, whether or not the
store has swept it yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session as the stores and the cache keep it (the token itself is never kept)."""

    id: str
    tenant: str
    user_id: int
    username: str
    token_hash: str
    created_at: dt.datetime
    expires_at: dt.datetime

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at <= now

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "user_id": self.user_id,
            "username": self.username,
            "token_hash": self.token_hash,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        return cls(
            id=str(data["id"]),
            tenant=str(data["tenant"]),
            user_id=int(data["user_id"]),
            username=str(data["username"]),
            token_hash=str(data["token_hash"]),
            created_at=dt.datetime.fromisoformat(data["created_at"]),
            expires_at=dt.datetime.fromisoformat(data["expires_at"]),
        )

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the token hash."""
        return {
            "session_id": self.id,
            "tenant": self.tenant,
            "user_id": self.user_id,
            "username": self.username,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


BeforeCommit = Callable[[Sequence["SessionRecord"]], Awaitable[None]]
"""What :meth:`SessionStore.remove` runs on the found sessions before deleting them for good."""


class SessionStore(Protocol):
    """Session documents of every tenant. Errors surface as :class:`StorageError`."""

    async def prepare(self, tenant: str) -> None:
        """Make the tenant's collection ready (indexes); idempotent."""

    async def add(self, record: SessionRecord) -> None:
        """Store a new session."""

    async def by_token(self, tenant: str, token_hash: str) -> SessionRecord | None:
        """The live session with this token hash in ``tenant``."""

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        """The live session ``session_id`` of ``tenant``."""

    async def of_user(self, tenant: str, user_id: int) -> list[SessionRecord]:
        """Every live session of the user in ``tenant``, oldest first."""

    async def get_many(self, tenant: str, session_ids: Sequence[str]) -> list[SessionRecord]:
        """These sessions of ``tenant``, expired ones included (to evict them from a cache)."""

    async def remove(
        self, tenant: str, session_ids: Sequence[str], *, before_commit: BeforeCommit | None = None
    ) -> list[SessionRecord]:
        """Delete these sessions of ``tenant``; returns the ones that existed (idempotent).
        ``before_commit`` is given them while the delete can still be undone: if it raises,
        nothing is deleted."""

    async def close(self) -> None:
        """Release connections the store opened itself."""
