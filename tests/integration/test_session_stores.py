"""The session-store contract, on every store: SQLite, PostgreSQL and MongoDB over the wire
(SecantusDB; a real mongod too when RABBITRY_TEST_MONGODB_URL is set)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fixtures.sessions import session_record
from rabbitry.config import Settings
from rabbitry.sessions.backends import open_store
from rabbitry.sessions.store import SessionRecord, SessionStore
from rabbitry.storage import Database


@pytest.fixture
async def store(sessions_settings: Settings) -> AsyncIterator[SessionStore]:
    database = Database(sessions_settings.sql_url)
    await database.upgrade()
    opened = open_store(sessions_settings, database)
    try:
        yield opened
    finally:
        await opened.close()
        await database.close()


async def test_a_stored_session_is_found_by_token_and_id_in_its_tenant_only(
    store: SessionStore,
) -> None:
    for tenant in ("acme", "globex"):
        await store.prepare(tenant)
    mine = session_record("acme", 1)
    await store.add(mine)
    assert await store.by_token("acme", mine.token_hash) == mine
    assert await store.get("acme", mine.id) == mine
    assert await store.by_token("globex", mine.token_hash) is None
    assert await store.get("globex", mine.id) is None
    assert await store.of_user("globex", 1) == []
    assert await store.remove("globex", [mine.id]) == []
    assert await store.get("acme", mine.id) == mine


async def test_a_users_sessions_are_listed_oldest_first_and_removed_idempotently(
    store: SessionStore,
) -> None:
    await store.prepare("acme")
    ann = [session_record("acme", 7, age=30 - i) for i in range(5)]
    bob = session_record("acme", 8)
    for one in [*reversed(ann), bob]:
        await store.add(one)
    assert await store.of_user("acme", 7) == ann
    removed = await store.remove("acme", [ann[0].id, ann[1].id, "0" * 32])
    assert sorted(r.id for r in removed) == sorted([ann[0].id, ann[1].id])
    assert await store.remove("acme", [ann[0].id]) == []
    assert await store.of_user("acme", 7) == ann[2:]
    assert [r.id for r in await store.remove("acme", [r.id for r in ann[2:]])] != []
    assert await store.of_user("acme", 7) == []
    assert await store.of_user("acme", 8) == [bob]


async def test_an_expired_session_is_never_returned_but_can_still_be_removed(
    store: SessionStore,
) -> None:
    await store.prepare("acme")
    old = session_record("acme", 3, ttl=10, age=20)
    await store.add(old)
    assert await store.by_token("acme", old.token_hash) is None
    assert await store.get("acme", old.id) is None
    assert await store.of_user("acme", 3) == []
    assert await store.get_many("acme", [old.id]) == [old]
    assert await store.remove("acme", [old.id]) == [old]


async def test_two_sessions_cannot_share_a_token_hash(store: SessionStore) -> None:
    from rabbitry.errors import StorageError

    await store.prepare("acme")
    first = session_record("acme", 1)
    await store.add(first)
    twin = SessionRecord(
        id=uuid.uuid4().hex,
        tenant="acme",
        user_id=2,
        username="user-2",
        token_hash=first.token_hash,
        created_at=first.created_at,
        expires_at=first.expires_at,
    )
    with pytest.raises(StorageError):
        await store.add(twin)
    assert await store.by_token("acme", first.token_hash) == first


async def test_the_mongodb_store_keeps_each_tenant_in_its_own_indexed_collection(
    mongo_wire_url: str, namespace: str, tmp_path: object
) -> None:
    from pymongo import AsyncMongoClient

    from rabbitry.sessions.mongo_store import MongoSessionStore

    store = MongoSessionStore.connect(mongo_wire_url, database="rabbitry", namespace=namespace)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_wire_url)
    try:
        await store.add(session_record("acme", 1))
        await store.add(session_record("globex", 1))
        db = client["rabbitry"]
        names = sorted(n for n in await db.list_collection_names() if n.startswith(namespace))
        assert names == [f"{namespace}.sessions.acme", f"{namespace}.sessions.globex"]
        indexes = await db[f"{namespace}.sessions.acme"].index_information()
        keys = {tuple(k for k, _ in spec["key"]): spec for spec in indexes.values()}
        assert keys[("user",)]
        assert keys[("expires_at",)]["expireAfterSeconds"] == 0
        assert keys[("token_hash",)]["unique"] is True
        assert await db[f"{namespace}.sessions.acme"].count_documents({}) == 1
    finally:
        for name in (f"{namespace}.sessions.acme", f"{namespace}.sessions.globex"):
            await client["rabbitry"].drop_collection(name)
        await client.close()
        await store.close()
