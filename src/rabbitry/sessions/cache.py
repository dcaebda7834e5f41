"""The session cache: token hash → session, with a TTL, and a per-user index.

Redis (``RABBITRY_REDIS_URL``) when configured, else an in-process dict with the same rules (one
SESSION process only: another process could not evict what this one cached).

Keys, under the namespace: ``<ns>:session:<tenant>:<token hash>`` holds the session as JSON and
expires with the cache TTL (never after the session itself); ``<ns>:user-sessions:<tenant>:<user
id>`` is a sorted set of the token hashes cached for that user, scored by when each cache entry
expires. Spring Session's index rots because entries outlive their sessions (issues 2869, 3889);
here an entry and its index member are written by one Lua script and removed in one MULTI, the
set drops members whose score has passed on every write, and the set itself expires with its
latest member. So the index never holds a removed session, and an emptied set is gone.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from rabbitry.errors import StorageError
from rabbitry.sessions.store import SessionRecord
from rabbitry.storage.clock import utcnow

# KEYS: entry, index. ARGV: json, ttl ms, member, expiry ms (epoch), now ms (epoch).
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[2], last[2]) end
return 1
"""


class SessionCache(Protocol):
    async def get(self, tenant: str, token_hash: str) -> SessionRecord | None:
        """The cached live session for this token hash in ``tenant``."""

    async def put(self, record: SessionRecord) -> None:
        """Cache ``record`` for the cache TTL, or until it expires if sooner."""

    async def evict(self, records: Sequence[SessionRecord]) -> None:
        """Forget these sessions and their index members (idempotent)."""

    async def cached_for(self, tenant: str, user_id: int) -> list[str]:
        """The token hashes the per-user index holds (what evicting a user would remove)."""

    async def close(self) -> None: ...


def _ttl_ms(record: SessionRecord, ttl: float) -> int:
    remaining = (record.expires_at - utcnow()).total_seconds()
    return max(1, int(min(ttl, remaining) * 1000))


class RedisSessionCache:
    """The cache in Redis, shared by every SESSION process."""

    def __init__(self, redis: Redis, *, namespace: str, ttl: float) -> None:
        self._redis = redis
        self._ns = namespace
        self._ttl = ttl
        self._put = redis.register_script(_PUT)

    def entry_key(self, tenant: str, token_hash: str) -> str:
        return f"{self._ns}:session:{tenant}:{token_hash}"

    def index_key(self, tenant: str, user_id: int) -> str:
        return f"{self._ns}:user-sessions:{tenant}:{user_id}"

    async def get(self, tenant: str, token_hash: str) -> SessionRecord | None:
        try:
            raw = await self._redis.get(self.entry_key(tenant, token_hash))
        except RedisError as exc:
            raise StorageError(f"Redis: cannot read a session: {exc}") from exc
        if raw is None:
            return None
        record = SessionRecord.from_json(json.loads(raw))
        if record.tenant != tenant or record.token_hash != token_hash or record.expired(utcnow()):
            return None
        return record

    async def put(self, record: SessionRecord) -> None:
        ttl_ms = _ttl_ms(record, self._ttl)
        now_ms = int(time.time() * 1000)
        keys = [
            self.entry_key(record.tenant, record.token_hash),
            self.index_key(record.tenant, record.user_id),
        ]
        args: list[str | int] = [
            json.dumps(record.to_json()),
            ttl_ms,
            record.token_hash,
            now_ms + ttl_ms,
            now_ms,
        ]
        try:
            await self._put(keys=keys, args=args)
        except RedisError as exc:
            raise StorageError(f"Redis: cannot cache a session: {exc}") from exc

    async def evict(self, records: Sequence[SessionRecord]) -> None:
        if not records:
            return
        # One DEL for every entry and one ZREM per user's index, not two commands a session:
        # a user with 1,000 sessions is evicted in two commands.
        members: dict[str, list[str]] = {}
        for record in records:
            index = self.index_key(record.tenant, record.user_id)
            members.setdefault(index, []).append(record.token_hash)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*(self.entry_key(r.tenant, r.token_hash) for r in records))
                for index, hashes in members.items():
                    pipe.zrem(index, *hashes)
                await pipe.execute()
        except RedisError as exc:
            raise StorageError(f"Redis: cannot evict sessions: {exc}") from exc

    async def cached_for(self, tenant: str, user_id: int) -> list[str]:
        try:
            members = await self._redis.zrange(self.index_key(tenant, user_id), 0, -1)
        except RedisError as exc:
            raise StorageError(f"Redis: cannot read a user's index: {exc}") from exc
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def close(self) -> None:
        await self._redis.aclose()


class MemorySessionCache:
    """The same cache in this process's memory (``RABBITRY_REDIS_URL`` unset), holding at most
    ``max_entries`` sessions: expired ones leave on every write, and past the cap the entry
    written longest ago goes (a cache miss reads the store again; nothing is lost)."""

    def __init__(self, *, ttl: float, max_entries: int = 100_000) -> None:
        self._ttl = ttl
        self._cap = max_entries
        # In write order, which is expiry order but for sessions expiring before the TTL.
        self._entries: OrderedDict[tuple[str, str], tuple[SessionRecord, float]] = OrderedDict()
        self._index: dict[tuple[str, int], set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, tenant: str, token_hash: str) -> SessionRecord | None:
        found = self._entries.get((tenant, token_hash))
        if found is None:
            return None
        record, until = found
        if until <= time.monotonic() or record.expired(utcnow()):
            self._drop(record)
            return None
        return record

    async def put(self, record: SessionRecord) -> None:
        now = time.monotonic()
        until = now + _ttl_ms(record, self._ttl) / 1000
        key = (record.tenant, record.token_hash)
        self._entries[key] = (record, until)
        self._entries.move_to_end(key)
        self._index.setdefault((record.tenant, record.user_id), set()).add(record.token_hash)
        while self._entries:
            oldest, oldest_until = next(iter(self._entries.values()))
            if oldest_until > now and len(self._entries) <= self._cap:
                break
            self._drop(oldest)

    async def evict(self, records: Sequence[SessionRecord]) -> None:
        for record in records:
            self._drop(record)

    async def cached_for(self, tenant: str, user_id: int) -> list[str]:
        now = time.monotonic()
        hashes = self._index.get((tenant, user_id), set())
        live = [h for h in hashes if self._entries.get((tenant, h), (None, 0.0))[1] > now]
        return sorted(live)

    async def close(self) -> None:
        self._entries.clear()
        self._index.clear()

    def _drop(self, record: SessionRecord) -> None:
        self._entries.pop((record.tenant, record.token_hash), None)
        key = (record.tenant, record.user_id)
        members = self._index.get(key)
        if members is not None:
            members.discard(record.token_hash)
            if not members:
                del self._index[key]
