"""The session cache on real Redis and in process: TTLs, and a per-user index that never
keeps a removed session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from fixtures.sessions import REDIS_URL, delete_redis_keys, redis_keys, session_record
from rabbitry.sessions.cache import MemorySessionCache, RedisSessionCache, SessionCache


@pytest.fixture(params=["redis", "memory"])
async def cache(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[SessionCache]:
    made: SessionCache
    if request.param == "redis":
        made = RedisSessionCache(Redis.from_url(REDIS_URL), namespace=namespace, ttl=0.6)
    else:
        made = MemorySessionCache(ttl=0.6)
    try:
        yield made
    finally:
        await made.close()
        await delete_redis_keys(namespace)


async def test_a_cached_session_is_found_in_its_tenant_only_until_its_ttl(
    cache: SessionCache,
) -> None:
    one = session_record("acme", 1)
    await cache.put(one)
    assert await cache.get("acme", one.token_hash) == one
    assert await cache.get("globex", one.token_hash) is None
    await asyncio.sleep(0.8)
    assert await cache.get("acme", one.token_hash) is None
    assert await cache.cached_for("acme", 1) == []


async def test_the_cache_never_outlives_the_session_it_holds(cache: SessionCache) -> None:
    short = session_record("acme", 1, ttl=0.3)
    await cache.put(short)
    await asyncio.sleep(0.45)
    assert await cache.get("acme", short.token_hash) is None


async def test_evicting_a_session_removes_it_from_the_per_user_index_at_once(
    cache: SessionCache,
) -> None:
    sessions = [session_record("acme", 5) for _ in range(3)]
    other = session_record("acme", 6)
    for one in [*sessions, other]:
        await cache.put(one)
    assert await cache.cached_for("acme", 5) == sorted(s.token_hash for s in sessions)
    await cache.evict(sessions[:2])
    assert await cache.cached_for("acme", 5) == [sessions[2].token_hash]
    await cache.evict(sessions)  # idempotent
    assert await cache.cached_for("acme", 5) == []
    assert await cache.get("acme", sessions[2].token_hash) is None
    assert await cache.cached_for("acme", 6) == [other.token_hash]


async def test_redis_holds_no_key_of_a_user_whose_sessions_were_evicted(namespace: str) -> None:
    cache = RedisSessionCache(Redis.from_url(REDIS_URL), namespace=namespace, ttl=60)
    try:
        ann = [session_record("acme", 1) for _ in range(4)]
        bob = session_record("acme", 2)
        for one in [*ann, bob]:
            await cache.put(one)
        assert len(await redis_keys(namespace)) == 7  # 5 entries, 2 indexes
        await cache.evict(ann)
        assert await redis_keys(namespace) == sorted(
            [cache.entry_key("acme", bob.token_hash), cache.index_key("acme", 2)]
        )
    finally:
        await cache.close()
        await delete_redis_keys(namespace)


async def test_the_redis_index_expires_with_its_latest_entry_and_drops_expired_members(
    namespace: str,
) -> None:
    redis = Redis.from_url(REDIS_URL)
    cache = RedisSessionCache(redis, namespace=namespace, ttl=0.3)
    try:
        first = session_record("acme", 1)
        await cache.put(first)
        await asyncio.sleep(0.4)
        second = session_record("acme", 1)
        await cache.put(second)  # the write drops the member whose entry has expired
        assert await redis.zrange(cache.index_key("acme", 1), 0, -1) == [second.token_hash.encode()]
        assert 0 < await redis.pttl(cache.index_key("acme", 1)) <= 300
        await asyncio.sleep(0.4)
        assert await redis_keys(namespace) == []
    finally:
        await cache.close()
        await delete_redis_keys(namespace)
