"""Choosing and opening the session store, cache and throttle from the settings.

``RABBITRY_MONGODB_URL`` set → :class:`MongoSessionStore`, else :class:`SqlSessionStore` in the
process's database. ``RABBITRY_REDIS_URL`` set → the Redis cache and throttle, else in-process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from redis.asyncio import Redis

from rabbitry.config import Settings
from rabbitry.messaging.publisher import Publisher
from rabbitry.sessions.cache import MemorySessionCache, RedisSessionCache, SessionCache
from rabbitry.sessions.manager import SessionManager
from rabbitry.sessions.notices import RevocationNotices
from rabbitry.sessions.sql_store import SqlSessionStore
from rabbitry.sessions.store import SessionStore
from rabbitry.sessions.throttle import LoginThrottle, MemoryLoginThrottle, RedisLoginThrottle
from rabbitry.sessions.users import Users, hasher
from rabbitry.storage import Database


def open_store(settings: Settings, database: Database) -> SessionStore:
    """The configured store; close it with ``await store.close()``."""
    if settings.mongodb_url is None:
        return SqlSessionStore(database)
    from rabbitry.sessions.mongo_store import MongoSessionStore  # pymongo only when configured

    return MongoSessionStore.connect(
        settings.mongodb_url.get_secret_value(),
        database=settings.mongodb_database,
        namespace=settings.namespace,
        timeout=settings.connect_timeout,
    )


def users_of(settings: Settings, database: Database) -> Users:
    return Users(
        database,
        hasher(settings.password_time_cost, settings.password_memory_kib),
        concurrent_checks=settings.password_checks,
    )


@asynccontextmanager
async def open_manager(
    settings: Settings, database: Database, *, publisher: Publisher | None = None
) -> AsyncIterator[SessionManager]:
    """A :class:`SessionManager` on the configured backends, closed on exit. With a
    ``publisher``, revocations are announced on ``<ns>.sessions.revoked``."""
    async with AsyncExitStack() as stack:
        store = open_store(settings, database)
        stack.push_async_callback(store.close)
        cache: SessionCache
        throttle: LoginThrottle
        if settings.redis_url is None:
            cache = MemorySessionCache(
                ttl=settings.session_cache_ttl, max_entries=settings.session_cache_max_entries
            )
            throttle = MemoryLoginThrottle(
                max_failures=settings.login_max_failures,
                lockout=settings.login_lockout,
                per_client=settings.login_max_per_client,
            )
        else:
            redis = Redis.from_url(
                settings.redis_url.get_secret_value(),
                socket_timeout=settings.connect_timeout,
                socket_connect_timeout=settings.connect_timeout,
            )
            cache = RedisSessionCache(
                redis, namespace=settings.namespace, ttl=settings.session_cache_ttl
            )
            stack.push_async_callback(cache.close)
            throttle = RedisLoginThrottle(
                redis,
                namespace=settings.namespace,
                max_failures=settings.login_max_failures,
                lockout=settings.login_lockout,
                per_client=settings.login_max_per_client,
            )
        listener = None if publisher is None else RevocationNotices(publisher, settings.namespace)
        yield SessionManager(
            store,
            cache,
            users_of(settings, database),
            throttle,
            ttl=settings.session_ttl,
            listener=listener,
        )
