"""Login throttling: after ``max_failures`` failed logins for one username in a tenant, further
attempts are refused for ``lockout`` seconds, whether the password is right or not.

The count lives in Redis when the cache does (so every SESSION process sees it), else in
memory. Keys hold a hash of the username, never the name itself: a key is not a place for
user input. A success clears the count.
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from rabbitry.errors import StorageError


def _who(tenant: str, username: str) -> str:
    return hashlib.sha256(f"{tenant}\0{username}".encode()).hexdigest()[:32]


class LoginThrottle(Protocol):
    async def blocked(self, tenant: str, username: str) -> bool: ...

    async def failed(self, tenant: str, username: str) -> None: ...

    async def succeeded(self, tenant: str, username: str) -> None: ...


class RedisLoginThrottle:
    def __init__(self, redis: Redis, *, namespace: str, max_failures: int, lockout: float):
        self._redis = redis
        self._ns = namespace
        self._max = max_failures
        self._lockout_ms = int(lockout * 1000)

    def key(self, tenant: str, username: str) -> str:
        return f"{self._ns}:login-failures:{_who(tenant, username)}"

    async def blocked(self, tenant: str, username: str) -> bool:
        try:
            count = await self._redis.get(self.key(tenant, username))
        except RedisError as exc:
            raise StorageError(f"Redis: cannot read the login throttle: {exc}") from exc
        return count is not None and int(count) >= self._max

    async def failed(self, tenant: str, username: str) -> None:
        key = self.key(tenant, username)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.pexpire(key, self._lockout_ms)
                await pipe.execute()
        except RedisError as exc:
            raise StorageError(f"Redis: cannot count a failed login: {exc}") from exc

    async def succeeded(self, tenant: str, username: str) -> None:
        try:
            await self._redis.delete(self.key(tenant, username))
        except RedisError as exc:
            raise StorageError(f"Redis: cannot clear the login throttle: {exc}") from exc


class MemoryLoginThrottle:
    def __init__(self, *, max_failures: int, lockout: float) -> None:
        self._max = max_failures
        self._lockout = lockout
        self._failures: dict[str, tuple[int, float]] = {}

    async def blocked(self, tenant: str, username: str) -> bool:
        count, until = self._failures.get(_who(tenant, username), (0, 0.0))
        return count >= self._max and until > time.monotonic()

    async def failed(self, tenant: str, username: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 10_000:  # bound the memory an attacker can make us hold
            self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
        key = _who(tenant, username)
        count, until = self._failures.get(key, (0, 0.0))
        self._failures[key] = ((count if until > now else 0) + 1, now + self._lockout)

    async def succeeded(self, tenant: str, username: str) -> None:
        self._failures.pop(_who(tenant, username), None)
