"""A real ``mongod`` deletes expired sessions by itself (the TTL index ``prepare`` creates).

The deletion is mongod's own TTL monitor, which the wire server the suite runs everywhere
(SecantusDB) does not stand for, so this test exists only when ``RABBITRY_TEST_MONGODB_URL``
points at a real mongod (docs/testing.md). Without it the test is not defined at all: nothing
is skipped.
"""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from fixtures.sessions import REAL_MONGOD, session_record
from helpers import eventually_true
from rabbitry.sessions.mongo_store import MongoSessionStore

if REAL_MONGOD:

    async def test_a_real_mongod_deletes_an_expired_session_by_itself(namespace: str) -> None:
        assert REAL_MONGOD is not None
        store = MongoSessionStore.connect(
            REAL_MONGOD, database="rabbitry_tests", namespace=namespace
        )
        expired = session_record("acme", 7, ttl=60, age=120)  # expired a minute ago
        alive = session_record("acme", 7)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(REAL_MONGOD)
        collection = client["rabbitry_tests"][store.collection_name("acme")]
        try:
            await store.add(expired)
            await store.add(alive)
            assert await store.get("acme", expired.id) is None  # reads filter before the sweep

            async def swept() -> bool:
                return await collection.count_documents({"token_hash": expired.token_hash}) == 0

            # mongod's TTL monitor wakes every 60 s: two rounds, and room for a slow machine.
            await eventually_true(swept, timeout=200, what="mongod to delete the expired session")
            assert await store.get("acme", alive.id) == alive
        finally:
            await collection.drop()
            await client.close()
            await store.close()
