"""The session store in MongoDB (``RABBITRY_MONGODB_URL``), through pymongo's async client.

Each tenant has its own collection, ``<ns>.sessions.<tenant>`` in the
``RABBITRY_MONGODB_DATABASE`` database: a query can only ever see one tenant's documents.
Each collection has a unique index on the token hash, an index on the user (DISPATCH's "every
session of this user") and a TTL index on ``expires_at`` so MongoDB deletes expired sessions by
itself; its sweeper runs about once a minute, so reads filter on ``expires_at`` too.

Only this module imports pymongo; its errors become :class:`~rabbitry.errors.StorageError`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from rabbitry.errors import StorageError
from rabbitry.sessions.store import BeforeCommit, SessionRecord
from rabbitry.storage.clock import utcnow

Document = dict[str, Any]


class MongoSessionStore:
    """A :class:`~rabbitry.sessions.store.SessionStore` with one collection per tenant."""

    def __init__(
        self, client: AsyncMongoClient[Document], *, database: str, namespace: str
    ) -> None:
        self._client = client
        self._db = client[database]
        self._namespace = namespace
        self._prepared: set[str] = set()

    @classmethod
    def connect(
        cls, url: str, *, database: str, namespace: str, timeout: float = 5.0
    ) -> MongoSessionStore:
        """A store with a client of its own (closed by :meth:`close`); connects lazily."""
        ms = int(timeout * 1000)
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms
        )
        return cls(client, database=database, namespace=namespace)

    def collection_name(self, tenant: str) -> str:
        return f"{self._namespace}.sessions.{tenant}"

    def _collection(self, tenant: str) -> AsyncCollection[Document]:
        return self._db[self.collection_name(tenant)]

    async def prepare(self, tenant: str) -> None:
        if tenant in self._prepared:
            return
        collection = self._collection(tenant)
        async with _translated("prepare the session collection"):
            await collection.create_index([("token_hash", ASCENDING)], unique=True)
            await collection.create_index([("user", ASCENDING)])
            await collection.create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
        self._prepared.add(tenant)

    async def add(self, record: SessionRecord) -> None:
        await self.prepare(record.tenant)
        async with _translated("store a session"):
            await self._collection(record.tenant).insert_one(_document(record))

    async def by_token(self, tenant: str, token_hash: str) -> SessionRecord | None:
        return await self._one(tenant, {"token_hash": token_hash})

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        return await self._one(tenant, {"_id": session_id})

    async def of_user(self, tenant: str, user_id: int) -> list[SessionRecord]:
        query = {"user": user_id, "expires_at": {"$gt": utcnow()}}
        async with _translated("read a user's sessions"):
            cursor = self._collection(tenant).find(query).sort([("created_at", 1), ("_id", 1)])
            documents = await cursor.to_list()
        return [_record(tenant, d) for d in documents]

    async def get_many(self, tenant: str, session_ids: Sequence[str]) -> list[SessionRecord]:
        if not session_ids:
            return []
        query = {"_id": {"$in": list(set(session_ids))}}
        async with _translated("read sessions"):
            documents = await self._collection(tenant).find(query).to_list()
        return [_record(tenant, d) for d in documents]

    async def remove(
        self, tenant: str, session_ids: Sequence[str], *, before_commit: BeforeCommit | None = None
    ) -> list[SessionRecord]:
        if not session_ids:
            return []
        collection = self._collection(tenant)
        ids = list(dict.fromkeys(session_ids))
        async with _translated("remove sessions"):
            if len(ids) == 1 and before_commit is None:
                found = await collection.find_one_and_delete({"_id": ids[0]})
                return [] if found is None else [_record(tenant, found)]
            documents = await collection.find({"_id": {"$in": ids}}).to_list()
            if not documents:
                return []
            records = [_record(tenant, d) for d in documents]
            if before_commit is not None:  # no transaction here: before the delete instead
                await before_commit(records)
            await collection.delete_many({"_id": {"$in": [d["_id"] for d in documents]}})
        return records

    async def close(self) -> None:
        await self._client.close()

    async def _one(self, tenant: str, query: Document) -> SessionRecord | None:
        async with _translated("read a session"):
            found = await self._collection(tenant).find_one(
                {**query, "expires_at": {"$gt": utcnow()}}
            )
        return None if found is None else _record(tenant, found)


@asynccontextmanager
async def _translated(action: str) -> AsyncIterator[None]:
    try:
        yield
    except PyMongoError as exc:
        raise StorageError(f"MongoDB: cannot {action}: {type(exc).__name__}: {exc}") from exc


def _document(record: SessionRecord) -> Document:
    return {
        "_id": record.id,
        "user": record.user_id,
        "username": record.username,
        "token_hash": record.token_hash,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
    }


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _record(tenant: str, document: Document) -> SessionRecord:
    return SessionRecord(
        id=str(document["_id"]),
        tenant=tenant,
        user_id=int(document["user"]),
        username=str(document["username"]),
        token_hash=str(document["token_hash"]),
        created_at=_aware(document["created_at"]),
        expires_at=_aware(document["expires_at"]),
    )
